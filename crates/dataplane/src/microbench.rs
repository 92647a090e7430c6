//! Micro-benchmark of both programs through `BPF_PROG_TEST_RUN`.
