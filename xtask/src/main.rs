fn main() { println!("cargo xtask: nothing yet"); }
