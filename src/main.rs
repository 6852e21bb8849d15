fn main() {
    println!("{}", rlft::engine::probe());
}
