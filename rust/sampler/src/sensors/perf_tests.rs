//! Tests of the perf events reader (see [`super`]).

use super::*;

#[test]
fn attr_has_the_first_published_size() {
    assert_eq!(std::mem::size_of::<PerfEventAttr>(), 64);
}

/// Exercises the syscall and read path with a software event where the kernel allows it
/// (root or a low perf_event_paranoid, and no seccomp filter in the way).
#[test]
fn software_event_opens_and_counts_where_allowed() {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
    let file = match perf_event_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, 0) {
        Ok(f) => f,
        Err(e) => {
            let (u, _) = open_error("cpu-clock on cpu 0", &e, None);
            eprintln!("skipped: {}", u.reason);
            return;
        }
    };
    let mut src = PerfSource {
        info: SourceInfo {
            id: "perf:test".into(),
            backend: BACKEND,
            domain: Domain::Package,
            index: 0,
            label: String::new(),
            method: Method::Counter,
            counter: None,
            interval: Duration::from_millis(1),
            path: None,
            uuid: None,
        },
        file,
        path: PathBuf::from("cpu-clock"),
    };
    let Ok(Reading::Counter(a)) = src.read() else {
        panic!("first read failed")
    };
    let mut b = a;
    for _ in 0..1000 {
        std::thread::sleep(Duration::from_millis(1));
        if let Ok(Reading::Counter(v)) = src.read() {
            b = v;
        }
        if b > a {
            break;
        }
    }
    assert!(b > a, "the cpu-clock count did not move: {a} {b}");
}

#[test]
fn parses_descriptions() {
    assert_eq!(parse_event_config("event=0x02\n"), Some(2));
    assert_eq!(parse_event_config("event=0x1f"), Some(0x1f));
    assert_eq!(parse_event_config("event=3"), Some(3));
    assert_eq!(parse_event_config("umask=0x1,event=0x02"), None);
    assert_eq!(parse_event_config(""), None);
    assert_eq!(parse_event_config("event=zz"), None);
    assert_eq!(parse_cpu_list("0,18\n"), Some(vec![0, 18]));
    assert_eq!(parse_cpu_list("0-2,8"), Some(vec![0, 1, 2, 8]));
    assert_eq!(parse_cpu_list(""), None);
    assert_eq!(parse_cpu_list("3-1"), None);
    assert_eq!(
        parse_scale("2.3283064365386962890625e-10"),
        Some(2f64.powi(-32))
    );
    assert_eq!(parse_scale("0"), None);
    assert_eq!(parse_scale("-1e-3"), None);
    assert_eq!(parse_scale("nan"), None);
}
