//! The `attnbench` command line: the library's CLI over the built-in registry, with the
//! counting allocator that measures peak heap bytes.

attnbench::attnbench_main!(attnbench::Registry::builtin());
