//! Links the agent with packed relative relocations (`DT_RELR`, glibc 2.36+): the
//! position-independent binary's ~50,000 relative relocations shrink from 1.3 MB of
//! `.rela.dyn`, which every process of the binary (the agent and each container's shim
//! helper) reads at start-up, to a few kilobytes. Starts get faster and each shim's
//! resident set smaller, and the binary keeps its address randomisation.

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
