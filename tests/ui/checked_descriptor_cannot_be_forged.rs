// A CheckedDescriptor is made only by Descriptor::checked: it cannot be built from fields.
use cuda_ipc::ipc::{CheckedDescriptor, Descriptor};

fn main() {
    let _forged = CheckedDescriptor(Descriptor::example());
}
