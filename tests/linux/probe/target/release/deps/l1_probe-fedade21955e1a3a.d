/work/main/tests/linux/probe/target/release/deps/l1_probe-fedade21955e1a3a.d: src/main.rs src/disk.rs src/spy.rs src/stress.rs

/work/main/tests/linux/probe/target/release/deps/l1_probe-fedade21955e1a3a: src/main.rs src/disk.rs src/spy.rs src/stress.rs

src/main.rs:
src/disk.rs:
src/spy.rs:
src/stress.rs:
