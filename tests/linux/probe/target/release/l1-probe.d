/work/main/tests/linux/probe/target/release/l1-probe: /work/main/tests/linux/probe/src/disk.rs /work/main/tests/linux/probe/src/main.rs
