//! keel-node keeps the memory it frees (`server::keep_freed_memory`): the
//! option it sets is mimalloc's purge delay.

use keel_node::server::{MIMALLOC_PURGE_DELAY_OPTION, keep_freed_memory};

#[allow(unsafe_code)]
fn option(number: i32) -> std::ffi::c_long {
    // SAFETY: reads an option's value.
    unsafe { libmimalloc_sys::mi_option_get(number) }
}

#[test]
fn keeping_freed_memory_turns_mimalloc_s_purge_delay_off() {
    // The number holds the purge delay's default (1000 ms in the mimalloc
    // that libmimalloc-sys 0.1.49 builds: src/options.c), unless this
    // test's environment set it.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() && std::env::var_os("MIMALLOC_RESET_DELAY").is_none() {
        assert_eq!(option(MIMALLOC_PURGE_DELAY_OPTION), 1000, "mimalloc's purge delay moved to another number");
    }
    keep_freed_memory();
    assert_eq!(option(MIMALLOC_PURGE_DELAY_OPTION), -1, "purging is off");
}
