//! The host's steal counter, read from `/proc/stat`'s text.

use keel_bench::host;

#[test]
fn steal_is_the_eighth_figure_of_the_cpu_line_in_milliseconds() {
    let stat = "cpu  3290050 0 664800 1728518 586564 0 108364 2523 0 0\n\
                cpu0 1634995 0 315992 756931 452593 0 46147 1238 0 0\n\
                cpu1 1655054 0 348808 971586 133970 0 62216 1285 0 0\n\
                intr 1 2 3\n";
    // 2523 ticks of USER_HZ (100 a second): 25.23 s over both CPUs.
    assert_eq!(host::steal_ms(stat), Some(25_230));
}

#[test]
fn no_steal_figure_is_none_not_zero() {
    // A kernel without steal accounting has fewer figures.
    assert_eq!(host::steal_ms("cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\n"), None);
    assert_eq!(host::steal_ms("cpu0 1 2 3 4 5 6 7 8 9\n"), None, "only the all-CPU line counts");
    assert_eq!(host::steal_ms("cpu  1 2 3 4 5 6 7 x 9\n"), None);
    assert_eq!(host::steal_ms(""), None);
}

#[test]
fn this_machine_counts_steal_where_it_is_linux() {
    if cfg!(target_os = "linux") {
        assert!(host::read_steal_ms().is_some(), "/proc/stat has a steal figure on any kernel since 2.6.11");
    }
}

#[test]
fn cpu_lists_are_written_as_taskset_reads_them() {
    let list = host::cpu_list(&[0, 2, 3]);
    assert_eq!(list, "0,2,3");
    assert_eq!(keel_node::server::parse_cpu_list(&list), Some(vec![0, 2, 3]));
}

#[test]
fn a_thread_moved_onto_cpus_runs_only_there_and_can_move_back() {
    let mine = host::allowed_cpus();
    let last = *mine.last().expect("this thread may run somewhere");
    host::run_only_on(&[last]).expect("move onto one CPU");
    let moved = host::allowed_cpus();
    host::run_only_on(&mine).expect("move back");
    assert_eq!(moved, vec![last]);
    assert_eq!(host::allowed_cpus(), mine);
}

#[test]
fn a_process_cpu_time_is_its_user_and_system_ticks_in_milliseconds() {
    // proc(5): pid (comm) state ppid … utime (14) stime (15) …; a name may
    // hold spaces and parentheses.
    let stat = "4242 (keel (shard 0)) S 1 4242 4242 0 -1 4194560 2960 0 0 0 1234 56 0 0 20 0 5 0 100 1000 200";
    assert_eq!(host::process_cpu_ms(stat), Some((1234 + 56) * 10));
    assert_eq!(host::process_cpu_ms("4242 (short) S 1 2 3"), None, "too few fields");
    assert_eq!(host::process_cpu_ms("no parenthesis here"), None);
}

#[test]
fn this_process_cpu_time_advances_while_it_computes() {
    let me = std::process::id();
    let before = host::read_process_cpu_ms(me).expect("/proc/self/stat");
    // Compute until the kernel has counted at least one more tick (10 ms),
    // for at most 30 s of wall time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut x = 0u64;
    let after = loop {
        for i in 0..1_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i * i));
        }
        let now = host::read_process_cpu_ms(me).expect("/proc/self/stat");
        if now > before || std::time::Instant::now() > deadline {
            break now;
        }
    };
    assert!(after > before, "{before} ms, then {after} ms after computing for 30 s");
    assert_eq!(host::read_process_cpu_ms(u32::MAX), None, "no such process");
}
