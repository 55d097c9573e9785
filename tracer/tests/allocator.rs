//! Allocator tracing on the real kernel: every entry point of the allocator the target really uses, with
//! exact outstanding bytes per call site. The fixtures state their ground truth in their sources:
//! allocs.c (glibc), allocs_cpp.cpp (libstdc++'s operator new and delete), rust-mimalloc (mimalloc linked
//! into a Rust executable), and that executable stripped, traced with --symbols-from its unstripped build.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use common::{Figures, Report, Running, compile_with, fixture, output_dir};

/// (call site, outstanding bytes, outstanding allocations, allocated bytes).
type Truth = &'static [(&'static str, u64, u64, u64)];

const C_TRUTH: Truth = &[
    ("malloc_kept", 3000, 3, 3000),
    ("malloc_freed", 0, 0, 10000),
    ("calloc_kept", 1000, 1, 1000),
    ("realloc_grow", 400, 1, 700),
    ("realloc_shrink", 1000, 1, 5000),
    ("realloc_move", 20000, 1, 20128),
    ("realloc_from_null", 300, 1, 300),
    ("realloc_to_zero", 0, 0, 500),
    ("reallocarray_kept", 480, 1, 720),
    ("posix_memalign_kept", 1000, 1, 1000),
    ("posix_memalign_bad", 0, 0, 0),
    ("aligned_alloc_kept", 2048, 1, 2048),
    ("memalign_kept", 777, 1, 777),
    ("valloc_kept", 5000, 1, 5000),
    ("failed_malloc", 0, 0, 0),
    ("failed_realloc", 50, 1, 50),
    ("free_null", 0, 0, 0),
    ("thread_keeps", 1024, 4, 1024),
    ("cross_alloc", 0, 0, 2048),
    ("cross_free", 0, 0, 0),
    ("churn", 6400, 100, 6_400_000),
];

const CPP_TRUTH: Truth = &[
    ("new_kept", 96, 2, 96),
    ("new_deleted", 0, 0, 192),
    ("new_array_kept", 1000, 1, 1000),
    ("new_array_deleted", 0, 0, 1000),
    ("new_array_cookie_kept", 168, 1, 168),
    ("new_array_cookie_deleted", 0, 0, 88),
    ("aligned_new_kept", 192, 1, 192),
    ("aligned_new_deleted", 0, 0, 384),
    ("aligned_array_kept", 384, 1, 384),
    ("nothrow_new_kept", 48, 1, 48),
    ("nothrow_array_kept", 500, 1, 500),
    ("nothrow_new_failed", 0, 0, 0),
    ("vector_growth", 424, 2, 464),
    ("thread_keeps", 999, 3, 999),
    ("cross_alloc", 0, 0, 192),
    ("cross_delete", 0, 0, 0),
    ("churn", 4800, 100, 4_800_000),
];

const RUST_TRUTH: Truth = &[
    ("keep_vec", 4000, 1, 4000),
    ("drop_vec", 0, 0, 8000),
    ("keep_box", 256, 1, 256),
    ("drop_box", 0, 0, 400),
    ("keep_zeroed", 2048, 1, 2048),
    ("keep_aligned", 128, 1, 128),
    ("grow_kept", 1000, 1, 1100),
    ("shrink_kept", 500, 1, 3500),
    ("grow_dropped", 0, 0, 192),
    ("churn", 4800, 100, 480_000),
    ("thread_keeps", 4000, 4, 4000),
    ("alloc_for_other_thread", 0, 0, 700),
];

/// Traces `program wait` by pid and returns the report.
fn trace(test: &str, program: &Path, extra: &[&str]) -> Report {
    common::trace_waiting_fixture(test, program, extra)
}

fn assert_truth(report: &Report, truth: Truth) {
    let sites: Vec<&str> = truth.iter().map(|(site, ..)| *site).collect();
    for &(site, outstanding_bytes, outstanding_allocs, allocated_bytes) in truth {
        assert_eq!(
            report.by_site("malloc", site, &sites),
            Figures { outstanding_bytes, outstanding_allocs, allocated_bytes },
            "{site}"
        );
    }
    for counter in ["lost_events", "map_full", "stack_errors", "missed_frees"] {
        assert_eq!(report.counter(counter), 0, "{counter}");
    }
}

fn uprobes_on(report: &Report, symbol: &str) -> usize {
    report.0["probes"].as_array().unwrap().iter().filter(|p| p["symbol"] == symbol).count()
}

/// Where the entry probe of `symbol` went: bytes past the function's entry.
fn entry_probe_offset(report: &Report, symbol: &str) -> u64 {
    let probes = report.0["probes"].as_array().unwrap();
    let probe = probes.iter().find(|p| p["symbol"] == symbol && p["kind"] == "uprobe").expect("an entry probe");
    probe["placement"]["offset"].as_u64().expect("a placement")
}

#[test]
fn glibc_malloc_family_is_exact_per_call_site() {
    let report = trace("glibc_malloc_family", &fixture("allocs"), &[]);
    assert_truth(&report, C_TRUTH);
    // Entry and return probes on malloc, an entry probe only on free.
    assert_eq!(uprobes_on(&report, "malloc"), 2);
    assert_eq!(uprobes_on(&report, "free"), 1);
    // glibc's free starts `test %rdi,%rdi; je <ret>`: its probe sits past that, and the figures above (frees
    // of NULL among them) are exact all the same.
    assert!(entry_probe_offset(&report, "free") > 0, "free is probed at its entry");
    // malloc's return probe puts the kernel's trampoline in place of its return address: the mmap and brk
    // calls malloc makes still end at their real caller.
    let trampoline = report.stacks().iter().flat_map(|s| s["frames"].as_array().unwrap().clone()).find(|frame| {
        frame.as_str().is_some_and(|name| name.contains("0x7fffffffe") || name.contains("0x7fffffffdfff"))
    });
    assert_eq!(trampoline, None, "a stack goes through the uretprobe trampoline");
    assert!(report.by_leaf("mmap", "thread_keeps").outstanding_bytes > 0, "the arena of thread_keeps' malloc is its");
    common::assert_detached(&report);
}

/// Traces allocs.c with a variable in the tracer's environment; its figures must stay exact.
fn allocs_exact_with_env(test: &str, variable: (&str, &str)) {
    let report = common::trace_waiting_fixture_with_env(test, &fixture("allocs"), &[], &[variable]);
    assert_truth(&report, C_TRUTH);
}

/// Every thread mapped to one shared slot (allocs.c runs four threads at once): they take turns in it, a
/// thread that finds it held goes to the hash map, and the figures stay exact.
#[test]
fn glibc_malloc_family_is_exact_when_threads_share_a_call_slot() {
    allocs_exact_with_env("glibc_malloc_family_shared_slot", ("LEAKTRACE_CALL_SLOT_MASK", "0"));
}

/// A stack map of four buckets: most stacks find their bucket taken, and are kept beside it (spilled)
/// instead of being lost; the figures stay exact, with no stack error.
#[test]
fn glibc_malloc_family_is_exact_when_stacks_share_buckets() {
    allocs_exact_with_env("glibc_malloc_family_tiny_stack_map", ("LEAKTRACE_STACK_MAP_ENTRIES", "4"));
}

/// A table of four allocation sites, one of them the stand-in for the sites past it: most sites find no
/// room, their blocks are charged to the stand-in (an unknown stack), and the totals stay exact to the byte:
/// equal to those of a run with room for every site, whose figures are exact per site.
#[test]
fn allocator_totals_are_exact_when_sites_overflow_their_table() {
    let roomy =
        common::trace_waiting_fixture_with_env("glibc_malloc_family_roomy_site_table", &fixture("allocs"), &[], &[]);
    assert_truth(&roomy, C_TRUTH);
    assert_eq!(roomy.counter("site_table_full"), 0);
    let tiny = common::trace_waiting_fixture_with_env(
        "glibc_malloc_family_tiny_site_table",
        &fixture("allocs"),
        &[],
        &[("LEAKTRACE_SITE_TABLE_ENTRIES", "4")],
    );
    assert_eq!(tiny.0["tracer"]["site_table_entries"], 4);
    assert!(tiny.counter("site_table_full") > 0, "the sites overflowed");
    let malloc = |report: &Report| report.0["totals"]["by_source"]["malloc"].clone();
    assert_eq!(malloc(&tiny), malloc(&roomy));
    // The fixture's call sites past the table are gone, their bytes under the stand-in's unknown stack.
    let named = C_TRUTH.iter().filter(|(site, ..)| {
        tiny.stacks().iter().any(|stack| stack["source"] == "malloc" && stack["frames"].to_string().contains(site))
    });
    assert!(named.count() < C_TRUTH.len() / 2, "most sites found no room");
    assert_eq!((tiny.counter("map_full"), tiny.counter("unmatched_frees")), (0, 0));
}

/// Every allocator call under way in the hash map, as a thread does whose slot another thread holds.
#[test]
fn glibc_malloc_family_is_exact_with_every_call_in_the_hash_map() {
    allocs_exact_with_env("glibc_malloc_family_no_slots", ("LEAKTRACE_CALL_SLOT_MASK", &u32::MAX.to_string()));
}

#[test]
fn operator_new_and_delete_are_exact_and_a_throwing_new_survives() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/allocs_cpp.cpp");
    let program = compile_with("allocs_cpp", &source, "g++", &["-std=c++17", "-fsized-deallocation"]);
    let report = trace("operator_new_and_delete", &program, &[]);
    assert_truth(&report, CPP_TRUTH);
    // The throwing forms have no return probe: a C++ unwinder cannot get through the kernel's trampoline.
    let probes = report.0["probes"].as_array().unwrap();
    let kinds = |symbol: &str| -> Vec<&str> {
        probes.iter().filter(|p| p["symbol"] == symbol).map(|p| p["kind"].as_str().unwrap()).collect()
    };
    assert_eq!(kinds("_Znwm"), ["uprobe"]);
    assert_eq!(kinds("_ZnwmRKSt9nothrow_t"), ["uprobe", "uretprobe"]);
    // libstdc++'s deletes start `endbr64; jmp`: probed on the jump, which the kernel emulates.
    assert_eq!(entry_probe_offset(&report, "_ZdlPv"), 4);
    assert_eq!(entry_probe_offset(&report, "_ZdlPvm"), 4);

    // The same, every call under way in the hash map: nesting and hand-over work there as in a slot.
    let report = common::trace_waiting_fixture_with_env(
        "operator_new_and_delete_no_slots",
        &program,
        &[],
        &[("LEAKTRACE_CALL_SLOT_MASK", &u32::MAX.to_string())],
    );
    assert_truth(&report, CPP_TRUTH);
}

/// Two callers through one C++ library path: std::map's and std::vector's template code (in the executable,
/// with frame pointers) and std::string's constructor (in libstdc++, without: the kernel's walk stops in
/// it). Every allocation has the same innermost frames; each caller's figures are exact, to the truth the
/// fixture prints from the compiler's sizes. The tracer learns to step out of the constructor when it first
/// sees a call from it (the fixture's warm-up, read by a snapshot), and walks past it from then on. Built
/// with -O2, as programs are.
#[test]
fn two_callers_through_one_cpp_library_path_are_exact_per_caller() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/two_callers.cpp");
    let program = compile_with("two_callers", &source, "g++", &["-O2", "-std=c++17"]);
    let out = output_dir("two_callers");
    let mut target = Running::spawn(Command::new(&program).arg("wait"));
    let pid = target.pid().to_string();
    let mut tracer = common::start_tracer(&["-o", out.to_str().unwrap(), "--pid", &pid, "--overhead", "off"]);
    target.send_line("go");
    target.stdout.wait_for("warm");
    tracer.snapshot();
    target.send_line("fill");
    let truth = target.read_truth(&["fill_log", "fill_map"]);
    let report = common::finish_waiting_fixture(target, tracer, &out);
    let sites = ["fill_log", "fill_map"];
    for (site, bytes, blocks) in truth {
        let figures = report.by_site("malloc", &site, &sites);
        assert_eq!((figures.outstanding_bytes, figures.outstanding_allocs), (bytes, blocks), "{site}");
        assert_eq!(figures.allocated_bytes, bytes, "{site}: nothing freed");
    }
    for counter in ["lost_events", "map_full", "stack_errors", "missed_frees", "caller_rules_full"] {
        assert_eq!(report.counter(counter), 0, "{counter}");
    }
}

#[test]
fn stacks_through_code_without_frame_pointers_reach_main_and_are_exact_per_caller() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/no_frame_pointers.c");
    let program = compile_with("no_frame_pointers", &source, "cc", &["-O2", "-fomit-frame-pointer"]);
    let out = output_dir("no_frame_pointers");
    let mut target = Running::spawn(Command::new(&program).arg("wait"));
    let pid = target.pid().to_string();
    let mut tracer = common::start_tracer(&["-o", out.to_str().unwrap(), "--pid", &pid, "--overhead", "off"]);
    // A round per function without frame pointers on the paths (make_node, intern, parse_*, step, main), and
    // one more: the tracer learns each from the stacks of the round before.
    for round in 0..6 {
        target.send_line("warm");
        target.stdout.wait_for(&format!("warm {round}"));
        tracer.snapshot();
    }
    target.send_line("fill");
    let truth = target.read_truth(&["parse_log", "parse_map"]);
    let report = common::finish_waiting_fixture(target, tracer, &out);
    let sites = ["parse_log", "parse_map"];
    for (site, bytes, blocks) in truth {
        let figures = report.by_site("malloc", &site, &sites);
        assert_eq!((figures.outstanding_bytes, figures.outstanding_allocs), (bytes, blocks), "{site}");
    }
    // Whole stacks, root first: the C runtime's start, main, the caller, intern, make_node, malloc.
    for stack in report.stacks() {
        let frames: Vec<&str> = stack["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        if stack["source"] != "malloc" || stack["outstanding_bytes"].as_u64() == Some(0) {
            continue;
        }
        let Some(at) = frames.iter().position(|f| sites.contains(f)) else { continue };
        assert_eq!(frames[at - 2..at], ["main", "step"], "{frames:?}");
        assert_eq!(&frames[at + 1..at + 3], ["intern", "make_node"], "{frames:?}");
        assert!(at >= 3 && frames[..at - 2].iter().all(|f| f.starts_with("__libc_start")), "{frames:?}");
    }
    for counter in ["lost_events", "map_full", "stack_errors", "missed_frees", "caller_rules_full"] {
        assert_eq!(report.counter(counter), 0, "{counter}");
    }
}

/// The stacks of a report that two runs of a fixture must give alike, with their figures, in a fixed order:
/// (source, frames root first, outstanding bytes, outstanding allocations, allocated bytes). Every malloc
/// stack but stdio's buffer's; the page faults of touches.c's touching functions. Not the others: which function first touches
/// a page of the stack or of the heap moves with the stack's random placement, and glibc makes arenas for
/// threads as they happen to meet.
fn comparable_stacks(report: &Report) -> Vec<(String, Vec<String>, u64, u64, u64)> {
    const TOUCHERS: [&str; 7] = [
        "touch_kept",
        "touch_with_memset",
        "touch_then_unmap",
        "touch_then_dontneed",
        "first_toucher",
        "retouch",
        "touch_deep",
    ];
    let mut stacks: Vec<_> = report
        .stacks()
        .iter()
        .filter(|s| {
            let through_toucher = s["frames"].as_array().unwrap().iter().any(|f| TOUCHERS.iter().any(|t| f == t));
            // stdio's buffer is allocated inside the C library, which keeps no frame pointers: once the
            // tracer has learned the library's rules, ours walks further up than the kernel's can.
            let in_stdio = s["frames"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().starts_with("__GI__IO"));
            (s["source"] == "malloc" && !in_stdio) || (s["source"] == "page-fault" && through_toucher)
        })
        .map(|s| {
            let frames = s["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
            let figure = |name: &str| s[name].as_u64().unwrap();
            let source = s["source"].as_str().unwrap().to_string();
            (source, frames, figure("outstanding_bytes"), figure("outstanding_allocs"), figure("allocated_bytes"))
        })
        .collect();
    stacks.sort();
    stacks
}

/// Our walk of user stacks (a copy of the stack's top pages, frames read from it, the rest one by one) gives
/// the very stacks the kernel's walk (`bpf_get_stackid`) gives: allocator calls' on allocs.c (threads, every
/// function of the malloc family) and on deep_frames.c (48 frames of 600 bytes: far past the copy, for a
/// malloc and for page faults), page faults' on touches.c (in the program's code and in libc's memset);
/// deep_frames' own truth holds.
#[test]
fn our_stack_walk_gives_the_stacks_of_the_kernels() {
    for (name, source) in [("allocs", "malloc"), ("deep_frames", "malloc"), ("touches", "page-fault")] {
        let program = fixture(name);
        let ours = common::trace_waiting_fixture(&format!("{name}_our_walk"), &program, &[]);
        let kernels = common::trace_waiting_fixture_with_env(
            &format!("{name}_kernel_walk"),
            &program,
            &[],
            &[("LEAKTRACE_KERNEL_WALK", "1")],
        );
        for report in [&ours, &kernels] {
            for counter in ["lost_events", "map_full", "stack_errors"] {
                assert_eq!(report.counter(counter), 0, "{name}: {counter}");
            }
        }
        // Our walk took the stacks itself: the kernel's stands in only for a walk another thread's preempted
        // (allocs.c has threads), never for a stack it could not read. Forced, the kernel's walk is no fallback.
        assert!(ours.counter("kernel_walk_fallbacks") <= 4, "{name}: {}", ours.counter("kernel_walk_fallbacks"));
        assert_eq!(kernels.counter("kernel_walk_fallbacks"), 0, "{name}");
        let stacks = comparable_stacks(&ours);
        assert!(stacks.iter().filter(|s| s.0 == source).count() >= 3, "{name}: {source}: {stacks:?}");
        assert_eq!(stacks, comparable_stacks(&kernels), "{name}: our walk, then the kernel's");
    }
    let ours =
        comparable_stacks(&Report::load(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("out/deep_frames_our_walk")));
    let through = |leaf: &str| {
        ours.iter().find(|(source, frames, ..)| source == "malloc" && frames.iter().any(|f| f == leaf)).cloned()
    };
    let (_, deep, bytes, blocks, _) = through("keep_deep").expect("keep_deep's stack");
    assert_eq!((bytes, blocks), (4800, 50));
    assert_eq!(deep.iter().filter(|f| *f == "descend").count(), 48, "{deep:?}");
    assert!(deep[0].starts_with("__libc_start"), "{deep:?}");
    let (_, _, bytes, blocks, _) = through("keep_shallow").expect("keep_shallow's stack");
    assert_eq!((bytes, blocks), (4000, 20));
    let faulted =
        ours.iter().find(|(source, frames, ..)| source == "page-fault" && frames.last().unwrap() == "touch_deep");
    let (_, deep, bytes, pages, _) = faulted.expect("touch_deep's stack").clone();
    assert_eq!((bytes, pages), (32768, 8));
    assert_eq!(deep.iter().filter(|f| *f == "descend").count(), 48, "{deep:?}");
    assert!(deep[0].starts_with("__libc_start"), "{deep:?}");
}

/// sqlite3 as Debian builds it (-O2, no frame pointers, libsqlite3 stripped to its dynamic symbols): its
/// allocations' stacks reach the C runtime's start once the tracer has learned the functions on their paths,
/// a round of statements at a time. The frame-pointer walk alone gives one or two frames.
#[test]
fn a_debian_program_without_frame_pointers_gets_whole_stacks() {
    const ROUND: &str = "with recursive s(x) as (select 1 union all select x + 1 from s where x < 2000) \
                         insert into t(b, c) select printf('row %d', x), randomblob(200) from s; \
                         select count(*) from t where b like '%7%'; delete from t;";
    let out = output_dir("sqlite3");
    let mut target = Running::spawn(Command::new("sqlite3").arg(":memory:"));
    let pid = target.pid().to_string();
    let mut tracer = common::start_tracer(&["-o", out.to_str().unwrap(), "--pid", &pid, "--overhead", "off"]);
    target.send_line("create table t(a integer primary key, b text, c blob);");
    // Each round's stacks end where the walk met a function it had no rule for yet; sqlite3's deepest paths
    // have about ten such functions.
    let mut round = |name: &str| {
        target.send_line(&format!("{ROUND} select '{name}';"));
        target.stdout.wait_for(name);
        Report::load(&tracer.snapshot())
    };
    for warm in 0..12 {
        round(&format!("warm {warm}"));
    }
    let before = round("warm 12");
    let after = round("done");
    target.close_stdin();
    assert!(target.wait().success(), "sqlite3 must survive being traced");
    assert!(tracer.wait().success());
    // What the last round allocated, by stack: the stacks listed hold what allocated most.
    let allocated = |report: &Report| -> HashMap<Vec<String>, u64> {
        report
            .stacks()
            .iter()
            .filter(|s| s["source"] == "malloc")
            .map(|s| {
                let frames = s["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string());
                (frames.collect(), s["allocated_bytes"].as_u64().unwrap())
            })
            .collect()
    };
    let total = |report: &Report| report.0["totals"]["by_source"]["malloc"]["allocated_bytes"].as_u64().unwrap();
    let last_round = total(&after) - total(&before);
    let earlier = allocated(&before);
    let whole: u64 = allocated(&after)
        .into_iter()
        .filter(|(frames, _)| frames[0] == "__libc_start_call_main" && frames.iter().any(|f| f == "sqlite3_step"))
        .map(|(frames, bytes)| bytes - earlier.get(&frames).copied().unwrap_or(0))
        .sum();
    assert!(last_round > 500_000, "the round allocated {last_round} bytes");
    assert!(
        whole as f64 >= 0.9 * last_round as f64,
        "{whole} of the last round's {last_round} bytes under whole stacks"
    );
    for counter in ["lost_events", "map_full", "stack_errors", "caller_rules_full"] {
        assert_eq!(after.counter(counter), 0, "{counter}");
    }
}

/// The Rust fixture with mimalloc, built once (its own target folder, frame pointers on).
fn rust_mimalloc() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rust-mimalloc");
            let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rust-mimalloc");
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--locked", "--quiet"])
                .current_dir(&crate_dir)
                .env("CARGO_TARGET_DIR", &target_dir)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .status()
                .expect("cargo runs");
            assert!(status.success(), "cannot build the Rust fixture");
            target_dir.join("release/rust-mimalloc-fixture")
        })
        .clone()
}

#[test]
fn mimalloc_linked_into_a_rust_executable_is_exact() {
    let report = trace("mimalloc_rust", &rust_mimalloc(), &[]);
    assert_truth(&report, RUST_TRUTH);
    assert!(uprobes_on(&report, "mi_malloc_aligned") >= 1, "mimalloc's entry points were found in the executable");
}

#[test]
fn a_stripped_executable_with_symbols_from_its_build_gives_the_same_results() {
    let unstripped = rust_mimalloc();
    let stripped = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rust-mimalloc-stripped");
    let status = Command::new("objcopy").arg("--strip-all").arg(&unstripped).arg(&stripped).status().unwrap();
    assert!(status.success());
    let report = trace("mimalloc_stripped", &stripped, &["--symbols-from", unstripped.to_str().unwrap()]);
    assert_truth(&report, RUST_TRUTH);

    // A build that is not the same is refused, in one line.
    let other = fixture("allocs");
    let mut target = Running::spawn(Command::new(&stripped).arg("wait"));
    let out = Command::new(common::TRACER)
        .args([
            "-d",
            "1s",
            "-o",
            output_dir("mimalloc_wrong_symbols").to_str().unwrap(),
            "--pid",
            &target.pid().to_string(),
        ])
        .args(["--symbols-from", other.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.lines().count() == 1, "{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    target.close_stdin();
}

#[test]
fn sampled_figures_are_unbiased_estimates() {
    // Sampling one block in every 4096 bytes allocated, on average: blocks of 4096 bytes or more are always
    // recorded, exactly; smaller ones are estimates. churn allocates 100000 x 64 bytes, about 1560 samples:
    // a standard error near 2.5%, so 15% is six of them.
    let report = trace("sampled_allocator", &fixture("allocs"), &["--sample-bytes", "4096"]);
    assert_eq!(report.0["allocator_sample_bytes"], 4096);
    let sites: Vec<&str> = C_TRUTH.iter().map(|(site, ..)| *site).collect();
    for (site, exact) in [("realloc_move", 20000), ("valloc_kept", 5000)] {
        assert_eq!(report.by_site("malloc", site, &sites).outstanding_bytes, exact, "{site} is above the interval");
    }
    let churn = report.by_site("malloc", "churn", &sites).allocated_bytes as f64;
    assert!((churn / 6_400_000.0 - 1.0).abs() < 0.15, "churn's allocated bytes estimated as {churn}");
    assert_eq!(report.counter("unmatched_frees"), 0, "frees of unsampled blocks are not unmatched");
}

const LATE_TRUTH: Truth = &[("late_kept", 3000, 3, 3000), ("late_freed", 0, 0, 10000), ("second_kept", 1000, 2, 1000)];

/// Two libraries with an allocator of their own (one source, two files), loaded with dlopen one after the
/// other after the tracer attached: the tracer finds each one's entry points when it is mapped, probes
/// them, says so once per library, and the figures are exact from then on.
#[test]
fn allocators_in_libraries_loaded_later_are_probed_and_exact() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/late_allocator.c");
    let first = compile_with("liblate_allocator.so", &source, "cc", &["-shared", "-fPIC"]);
    let second = compile_with("liblate_allocator_second.so", &source, "cc", &["-shared", "-fPIC"]);
    let program = fixture("dlopen_alloc");
    let out = output_dir("late_allocator");
    let mut target = Running::spawn(Command::new(&program).arg("wait").arg(&first).arg(&second));
    let pid = target.pid().to_string();
    // Every block traced: the figures are checked exactly.
    let mut tracer = common::start_tracer(&["-o", out.to_str().unwrap(), "--pid", &pid, "--overhead", "off"]);
    target.send_line("go");
    target.stdout.wait_for("loaded");
    let said = tracer.stderr.wait_for("loaded since");
    assert!(said.contains("liblate_allocator.so") && said.contains("mimalloc (2)"), "{said}");
    target.send_line("allocate");
    target.stdout.wait_for("loaded second");
    tracer.stderr.wait_for("liblate_allocator_second.so too, loaded since");
    let announced = tracer.stderr.seen().iter().filter(|line| line.contains("loaded since")).count();
    assert_eq!(announced, 2, "each library announced once: {:?}", tracer.stderr.seen());
    target.send_line("allocate");
    let report = common::finish_waiting_fixture(target, tracer, &out);
    assert_truth(&report, LATE_TRUTH);
    assert_eq!(uprobes_on(&report, "mi_malloc"), 4, "entry and return probes on each late mi_malloc");
    assert_eq!(uprobes_on(&report, "mi_free"), 2);
    let objects = report.0["allocators"]["objects"].as_array().unwrap();
    for name in ["liblate_allocator.so", "liblate_allocator_second.so"] {
        let late = objects
            .iter()
            .find(|object| object["path"].as_str().is_some_and(|path| path.ends_with(name)))
            .unwrap_or_else(|| panic!("{name} among the allocator objects"));
        assert!(late["notes"].to_string().contains("loaded after the trace began"), "{late}");
    }
    common::assert_detached(&report);
}

/// live_blocks.c holding `blocks` live at once, traced with `extra`: the snapshot taken while all are
/// held, and the final report once all are freed (after the tracer said `said`, when given). Every block
/// is traced (`--overhead off`): the figures are checked exactly.
fn trace_live_blocks(test: &str, blocks: u64, extra: &[&str], said: &[&str]) -> (Report, Report) {
    let out = output_dir(test);
    let program = fixture("live_blocks");
    let mut target = Running::spawn(Command::new(&program).args(["wait", &blocks.to_string()]));
    let pid = target.pid().to_string();
    let mut args = vec!["-o", out.to_str().unwrap(), "--pid", &pid, "--overhead", "off"];
    args.extend_from_slice(extra);
    let mut tracer = common::start_tracer(&args);
    target.send_line("go");
    target.stdout.wait_for("kept");
    let held = Report::load(&tracer.snapshot());
    for line in said {
        tracer.stderr.wait_for(line);
    }
    target.send_line("free");
    target.stdout.wait_for("done");
    tracer.snapshot();
    target.close_stdin();
    assert!(target.wait().success(), "the target must survive being traced");
    assert!(tracer.wait().success());
    (held, Report::load(&out))
}

#[test]
fn the_block_table_is_sized_from_the_memory_budget() {
    const BLOCKS: u64 = 100_000;
    // Half of the default 512M budget: two million live blocks, so all of these are exact.
    let (held, report) = trace_live_blocks("live_blocks_default", BLOCKS, &[], &[]);
    assert_eq!(held.0["tracer"]["block_table_entries"], 2 << 20);
    let kept = held.by_leaf("malloc", "keep_block");
    assert_eq!((kept.outstanding_bytes, kept.outstanding_allocs), (32 * BLOCKS, BLOCKS));
    assert_eq!(report.by_leaf("malloc", "keep_block").outstanding_allocs, 0);
    assert_eq!(report.counter("map_full"), 0);

    // The smallest budget, 16M: 65,536 entries. The blocks past the table are counted, never charged; the
    // kernel turns byte sampling on at the first of them, so that the table drains instead of frees going
    // unmatched. Nothing goes negative or wraps. With -v the kernel programs say so as it begins (aya-log).
    let said =
        ["kernel programs: block_table_full reached 1 on one CPU", "sampling the allocator by bytes from now on"];
    let (held, report) = trace_live_blocks("live_blocks_small", BLOCKS, &["--max-memory", "16M", "-v"], &said);
    let entries = held.0["tracer"]["block_table_entries"].as_u64().unwrap();
    assert_eq!(entries, 65_536);
    let kept = held.by_leaf("malloc", "keep_block");
    let left_out = report.counter("block_table_full");
    assert_eq!(report.counter("map_full"), left_out, "only the block table was full");
    // The kernel checks a large table's fullness on per-CPU counts, so it may stop a little short.
    assert!(kept.outstanding_allocs <= entries && kept.outstanding_allocs + left_out < BLOCKS, "{kept:?}");
    // What is missing is said to the byte: the first block left out counts for its 32 bytes (sampling was
    // off), every later one was sampled and counts for the interval.
    assert!(left_out >= 1);
    assert_eq!(report.counter("block_table_full_bytes"), 32 + (left_out - 1) * (512 << 10));
    assert_eq!(kept.outstanding_bytes, 32 * kept.outstanding_allocs);
    let after = report.by_leaf("malloc", "keep_block");
    assert_eq!((after.outstanding_bytes, after.outstanding_allocs), (0, 0));
    assert_eq!(report.0["allocator_sample_bytes"], 512 << 10);
    assert!(report.0["allocator_sampled_since"].is_string(), "{}", report.0["allocator_sampled_since"]);
    assert_eq!(report.counter("negative_figures"), 0);
}

/// With -v, a free that meets no live block says which address and thread (aya-log, from the kernel
/// program), so that a run that should have none shows where to look: here frees of blocks allocated
/// before the tracer attached.
#[test]
fn an_unmatched_free_says_its_address_and_thread_with_verbose() {
    let out = output_dir("an_unmatched_free_says_its_address_and_thread_with_verbose");
    // Allocates 1,000 blocks of 4 KiB, holds them 6 s (the tracer attaches meanwhile, in 1 to 4 s beside
    // the other tests), frees them.
    let mut target = Running::spawn(Command::new(fixture("frees_all")).args(["6000", "1000"]));
    target.stdout.wait_for("allocated");
    let pid = target.pid().to_string();
    let mut tracer = common::start_tracer(&["-v", "-o", out.to_str().unwrap(), "--pid", &pid]);
    let line = tracer.stderr.wait_for("unmatched free 1 on one CPU");
    assert!(target.wait().success(), "the target must survive being traced");
    assert!(tracer.wait().success());
    let said = line.split("unmatched free 1 on one CPU: free of ").nth(1).expect("the address follows");
    let (address, thread) = said.split_once(" by thread ").expect("the thread follows");
    let address = u64::from_str_radix(address, 16).unwrap_or_else(|_| panic!("a hex address: {line}"));
    assert!(address > 0 && address % 16 == 0, "{line}");
    assert_eq!(thread.split(',').next(), Some(pid.as_str()), "{line}");
    assert!(Report::load(&out).counter("unmatched_frees") >= 1000);
}
