//! MIG: the listing of each GPU's instances and their slices, an instance standing for its whole
//! GPU, what a driver without the MIG calls (or without those giving slices) leaves, published
//! GPUs resolving the legacy form only, and the stand-in's MIG handles keeping NVML's contract.

use carbonctx_sampler::nvml::{discover, list_gpus, visible_among};
use carbonctx_sampler::Method;

use super::ids;
use crate::common_nvml::{self, reasons, FakeNvml};

/// Three GPUs: GPU 0 without MIG, GPU 1 with two instances in slots 0 and 2 (slot 1 empty),
/// GPU 2 with MIG on and no instance.
const MIG_CONFIG: &str = "devices=3\n\
     gpu0.uuid=GPU-aaaa0000-0000-0000-0000-000000000000\n\
     gpu1.uuid=GPU-bbbb0000-0000-0000-0000-000000000001\n\
     gpu1.name=NVIDIA A100-SXM4-80GB\n\
     gpu1.mig=MIG-abcd0000-0000-0000-0000-000000000000, ,MIG-22220000-0000-0000-0000-000000000000\n\
     gpu2.uuid=GPU-cccc0000-0000-0000-0000-000000000002\n\
     gpu2.mig=\n";
const MIG_A: &str = "MIG-abcd0000-0000-0000-0000-000000000000";
const MIG_B: &str = "MIG-22220000-0000-0000-0000-000000000000";

#[test]
fn the_listing_carries_each_gpus_mig_instances() {
    let fake = FakeNvml::new(MIG_CONFIG);
    let gpus = list_gpus(&fake.roots()).expect("NVML loads");
    let migs: Vec<(u32, Vec<&str>)> = gpus
        .iter()
        .map(|g| (g.index, g.mig_uuids.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(migs, [(0, vec![]), (1, vec![MIG_A, MIG_B]), (2, vec![])]);
    assert_eq!(
        gpus[1].uuid.as_deref(),
        Some("GPU-bbbb0000-0000-0000-0000-000000000001")
    );
    assert_eq!(gpus[1].name.as_deref(), Some("NVIDIA A100-SXM4-80GB"));
    assert_eq!(fake.init_count(), 0, "the listing shuts NVML down");

    let missing = FakeNvml::new("");
    std::fs::remove_file(&missing.lib).unwrap();
    let u = list_gpus(&missing.roots()).expect_err("no library");
    assert!(u.hint.contains("CARBONCTX_NVML_LIBRARY"), "{}", u.hint);
}

#[test]
fn a_mig_instance_stands_for_its_whole_gpu() {
    let fake = FakeNvml::new(MIG_CONFIG);
    let found = discover(&fake.roots(), Some(MIG_B), None);
    assert!(found.unavailable.is_empty(), "{}", reasons(&found));
    assert_eq!(ids(&found), ["nvml:1"]);
    let info = found.sources[0].info();
    assert_eq!(info.method, Method::Counter);
    assert_eq!(
        info.uuid.as_deref(),
        Some("GPU-bbbb0000-0000-0000-0000-000000000001")
    );
    assert!(
        info.label.contains("whole GPU") && info.label.contains(MIG_B),
        "{}",
        info.label
    );
    drop(found);

    // nvidia-smi -L prints UUIDs in either case; another instance of a GPU listed adds nothing;
    // entries after a MIG instance still count; the legacy form names the parent GPU.
    let cases: [(String, &[&str]); 4] = [
        (MIG_A.to_uppercase(), &["nvml:1"]),
        (format!("{MIG_A},{MIG_B}"), &["nvml:1"]),
        (format!("{MIG_B},2,0"), &["nvml:1", "nvml:2", "nvml:0"]),
        (
            "MIG-GPU-bbbb0000-0000-0000-0000-000000000001/1/0".to_string(),
            &["nvml:1"],
        ),
    ];
    for (value, want) in cases {
        let found = discover(&fake.roots(), Some(&value), Some("PCI_BUS_ID"));
        assert!(found.unavailable.is_empty(), "{value}: {}", reasons(&found));
        assert_eq!(ids(&found), want, "CUDA_VISIBLE_DEVICES={value}");
    }
}

#[test]
fn a_mig_uuid_that_names_no_instance_is_unavailable_and_ends_the_list() {
    let fake = FakeNvml::new(MIG_CONFIG);
    let unknown = "MIG-ffff0000-0000-0000-0000-000000000000";
    let found = discover(&fake.roots(), Some(unknown), None);
    assert!(found.sources.is_empty());
    let u = &found.unavailable[0];
    assert!(u.what.contains(unknown), "{}", u.what);
    assert!(u.reason.contains("no MIG instance"), "{}", u.reason);
    assert!(u.reason.contains("2 instance(s)"), "{}", u.reason);
    assert!(u.hint.contains("nvidia-smi -L"), "{}", u.hint);
    // As CUDA reads the list: nothing after an entry that names nothing.
    let found = discover(&fake.roots(), Some(&format!("0,{unknown},1")), None);
    assert_eq!(ids(&found), ["nvml:0"]);
    // A legacy entry naming a GPU that is not there names nothing either.
    let found = discover(
        &fake.roots(),
        Some("MIG-GPU-dddd0000-0000-0000-0000-000000000009/1/0"),
        None,
    );
    assert!(found.sources.is_empty() && !found.unavailable.is_empty());
}

/// CUDA gives a process one MIG instance, the first listed (NVIDIA's MIG user guide): an
/// instance of another GPU listed after it is not this process's, and its GPU is not measured.
#[test]
fn a_process_measures_the_gpu_of_its_first_mig_instance_only() {
    let config = MIG_CONFIG.replace(
        "gpu2.mig=\n",
        "gpu2.mig=MIG-33330000-0000-0000-0000-000000000000\n",
    );
    let fake = FakeNvml::new(&config);
    let other = "MIG-33330000-0000-0000-0000-000000000000";
    let found = discover(&fake.roots(), Some(&format!("{MIG_B},{other}")), None);
    assert_eq!(ids(&found), ["nvml:1"]);
    let [u] = &found.unavailable[..] else {
        panic!("{}", reasons(&found))
    };
    assert!(u.what.contains(other), "{}", u.what);
    assert!(u.reason.contains("one MIG instance"), "{}", u.reason);
    assert!(u.reason.contains("GPU 2 is not measured"), "{}", u.reason);
    assert!(
        u.hint.contains("one MIG instance per process"),
        "{}",
        u.hint
    );
    drop(found);
    // Its own GPU's instance alone is measured as before.
    let found = discover(&fake.roots(), Some(other), None);
    assert_eq!(ids(&found), ["nvml:2"]);
}

#[test]
fn each_instance_comes_with_its_slices_and_the_gpu_with_its_own() {
    // An A100 cut 3g + 4g of its 7 slices, and an A30-like GPU of 4 slices cut 2g (one compute
    // instance of 1 slice in it) + 1g.
    let fake = FakeNvml::new(
        "devices=2\n\
         gpu0.name=NVIDIA A100-SXM4-40GB\n\
         gpu0.memory_mib=40960\n\
         gpu0.mig=MIG-aaaa:3, ,MIG-bbbb:4\n\
         gpu1.mig=MIG-cccc:2:1,MIG-dddd\n\
         gpu1.mig_slices=4\n",
    );
    let gpus = list_gpus(&fake.roots()).expect("NVML loads");
    /// An instance's UUID, slices and GPU instance id.
    type Inst<'a> = (&'a str, Option<u32>, Option<u32>);
    let got: Vec<(Option<u32>, Vec<Inst>)> = gpus
        .iter()
        .map(|g| {
            let inst = g
                .mig_instances
                .iter()
                .map(|m| (m.uuid.as_str(), m.slices, m.gpu_instance_id))
                .collect();
            (g.slices, inst)
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                Some(7),
                vec![
                    ("MIG-aaaa", Some(3), Some(1)),
                    ("MIG-bbbb", Some(4), Some(3))
                ]
            ),
            (
                Some(4),
                vec![
                    ("MIG-cccc", Some(2), Some(1)),
                    ("MIG-dddd", Some(1), Some(2))
                ]
            ),
        ]
    );
    assert_eq!(gpus[0].mig_uuids, ["MIG-aaaa", "MIG-bbbb"]);
    let a = &gpus[0].mig_instances[0];
    assert_eq!(a.name.as_deref(), Some("NVIDIA A100-SXM4-40GB MIG 3g.17gb"));
    assert_eq!(
        (a.compute_instance_id, a.slices_error.as_deref()),
        (Some(0), None)
    );
    assert_eq!(
        a.compute_slices,
        Some(3),
        "one compute instance spans its GPU instance"
    );
    let c = &gpus[1].mig_instances[0];
    assert_eq!((c.slices, c.compute_slices), (Some(2), Some(1)));
    assert!(
        c.name
            .as_deref()
            .unwrap_or_default()
            .ends_with("MIG 1c.2g.8gb"),
        "{c:?}"
    );
    assert!(gpus.iter().all(|g| g.slices_error.is_none()));
    assert_eq!(fake.init_count(), 0);
}

#[test]
fn where_the_driver_does_not_give_slices_the_listing_says_why() {
    let config = "devices=2\ngpu0.mig=MIG-aaaa:3\ngpu1.mig=MIG-bbbb:2\ngpu1.mig_slices=0\n";
    // Calls missing (a driver before R455): instances listed, slices unknown, with the call.
    let fake = FakeNvml::of(common_nvml::built_without_mig_slices(), config);
    let gpus = list_gpus(&fake.roots()).expect("NVML loads");
    let g = &gpus[0];
    assert_eq!(g.mig_uuids, ["MIG-aaaa"]);
    assert_eq!((g.slices, g.mig_instances[0].slices), (None, None));
    let why = g.mig_instances[0]
        .slices_error
        .as_deref()
        .unwrap_or_default();
    assert!(why.contains("lacks nvmlDeviceGetAttributes_v2"), "{why}");
    let why = g.slices_error.as_deref().unwrap_or_default();
    assert!(
        why.contains("lacks nvmlDeviceGetGpuInstanceProfileInfo"),
        "{why}"
    );
    // Calls refused: NVML's own words and code.
    let fake = FakeNvml::new(config);
    let gpus = list_gpus(&fake.roots()).expect("NVML loads");
    assert_eq!(
        (gpus[0].slices, gpus[0].mig_instances[0].slices),
        (Some(7), Some(3))
    );
    let g = &gpus[1];
    assert_eq!((g.slices, g.mig_instances[0].slices), (None, None));
    let why = g.mig_instances[0]
        .slices_error
        .as_deref()
        .unwrap_or_default();
    assert!(
        why.contains("nvmlDeviceGetAttributes_v2 failed") && why.contains("code 3"),
        "{why}"
    );
    let why = g.slices_error.as_deref().unwrap_or_default();
    assert!(
        why.contains("no profile") && why.contains("code 3"),
        "{why}"
    );
    // Either way the GPU is read as ever.
    let found = discover(&fake.roots(), Some("MIG-bbbb"), None);
    assert_eq!(ids(&found), ["nvml:1"]);
}

#[test]
fn without_the_drivers_mig_calls_no_instance_is_known() {
    let fake = FakeNvml::of(common_nvml::built_without_mig(), MIG_CONFIG);
    let gpus = list_gpus(&fake.roots()).expect("NVML loads");
    assert_eq!(gpus.len(), 3);
    assert!(gpus
        .iter()
        .all(|g| g.mig_uuids.is_empty() && g.slices.is_none()));
    let found = discover(&fake.roots(), Some(MIG_A), None);
    assert!(found.sources.is_empty());
    assert!(
        reasons(&found).contains("no MIG instance"),
        "{}",
        reasons(&found)
    );
    // The GPUs themselves are read as ever.
    let found = discover(&fake.roots(), None, None);
    assert_eq!(ids(&found), ["nvml:0", "nvml:1", "nvml:2"]);
}

#[test]
fn published_gpus_resolve_only_the_legacy_mig_form() {
    // A process sharing the node's sampler has its GPUs' UUIDs, not their instances': the
    // legacy form names the parent; the current one is reported, with what to do.
    let published = [
        (
            0,
            Some("GPU-aaaa0000-0000-0000-0000-000000000000".to_string()),
        ),
        (
            1,
            Some("GPU-bbbb0000-0000-0000-0000-000000000001".to_string()),
        ),
    ];
    let (v, u) = visible_among(
        &published,
        Some("MIG-GPU-BBBB0000-0000-0000-0000-000000000001/2/0,0"),
    );
    assert_eq!((v, u.len()), (vec![1, 0], 0));
    let (v, u) = visible_among(&published, Some(MIG_A));
    assert!(v.is_empty());
    assert!(u[0].hint.contains("parent GPU's UUID"), "{}", u[0].hint);
    assert!(
        u[0].reason.contains("not their instances"),
        "{}",
        u[0].reason
    );
}

#[test]
fn the_stand_ins_mig_handles_follow_nvmls_contract() {
    use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
    let fake = FakeNvml::new(MIG_CONFIG);
    type Dev = *mut c_void;
    // SAFETY: the stand-in exports these with NVML's signatures, as declared here; the library
    // stays loaded (and initialised) until the end of the block.
    unsafe {
        let lib = libloading::Library::new(&fake.lib).unwrap();
        let init = *lib
            .get::<unsafe extern "C" fn() -> c_int>(b"nvmlInit_v2\0")
            .unwrap();
        let shutdown = *lib
            .get::<unsafe extern "C" fn() -> c_int>(b"nvmlShutdown\0")
            .unwrap();
        let by_index = *lib
            .get::<unsafe extern "C" fn(c_uint, *mut Dev) -> c_int>(
                b"nvmlDeviceGetHandleByIndex_v2\0",
            )
            .unwrap();
        let mode = *lib
            .get::<unsafe extern "C" fn(Dev, *mut c_uint, *mut c_uint) -> c_int>(
                b"nvmlDeviceGetMigMode\0",
            )
            .unwrap();
        let max = *lib
            .get::<unsafe extern "C" fn(Dev, *mut c_uint) -> c_int>(
                b"nvmlDeviceGetMaxMigDeviceCount\0",
            )
            .unwrap();
        let mig = *lib
            .get::<unsafe extern "C" fn(Dev, c_uint, *mut Dev) -> c_int>(
                b"nvmlDeviceGetMigDeviceHandleByIndex\0",
            )
            .unwrap();
        let is_mig = *lib
            .get::<unsafe extern "C" fn(Dev, *mut c_uint) -> c_int>(
                b"nvmlDeviceIsMigDeviceHandle\0",
            )
            .unwrap();
        let parent = *lib
            .get::<unsafe extern "C" fn(Dev, *mut Dev) -> c_int>(
                b"nvmlDeviceGetDeviceHandleFromMigDeviceHandle\0",
            )
            .unwrap();
        let uuid = *lib
            .get::<unsafe extern "C" fn(Dev, *mut c_char, c_uint) -> c_int>(b"nvmlDeviceGetUUID\0")
            .unwrap();
        let energy = *lib
            .get::<unsafe extern "C" fn(Dev, *mut u64) -> c_int>(
                b"nvmlDeviceGetTotalEnergyConsumption\0",
            )
            .unwrap();
        assert_eq!(init(), 0);
        let mut gpu: [Dev; 3] = [std::ptr::null_mut(); 3];
        for (i, g) in gpu.iter_mut().enumerate() {
            assert_eq!(by_index(i as c_uint, g), 0);
        }
        let (mut cur, mut pend, mut n) = (9, 9, 9);
        assert_eq!(
            mode(gpu[0], &mut cur, &mut pend),
            3,
            "no MIG: NOT_SUPPORTED"
        );
        assert_eq!((max(gpu[0], &mut n), n), (0, 0), "no MIG: zero slots");
        assert_eq!((mode(gpu[1], &mut cur, &mut pend), cur), (0, 1));
        assert_eq!((max(gpu[1], &mut n), n), (0, 3));
        let mut h: Dev = std::ptr::null_mut();
        assert_eq!(mig(gpu[1], 1, &mut h), 6, "an empty slot: NOT_FOUND");
        assert_eq!(
            mig(gpu[1], 3, &mut h),
            2,
            "past the slots: INVALID_ARGUMENT"
        );
        assert_eq!(mig(gpu[0], 0, &mut h), 3);
        assert_eq!(mig(gpu[1], 2, &mut h), 0);
        let mut buf = [0 as c_char; 96];
        assert_eq!(uuid(h, buf.as_mut_ptr(), 96), 0);
        assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), MIG_B);
        let mut flag = 9;
        assert_eq!((is_mig(h, &mut flag), flag), (0, 1));
        assert_eq!((is_mig(gpu[1], &mut flag), flag), (0, 0));
        let mut p: Dev = std::ptr::null_mut();
        assert_eq!(parent(h, &mut p), 0);
        assert_eq!(p, gpu[1]);
        assert_eq!(parent(gpu[1], &mut p), 2);
        let mut mj = 0u64;
        assert_eq!(
            energy(h, &mut mj),
            3,
            "energy is the GPU's, not an instance's"
        );
        assert_eq!(energy(gpu[1], &mut mj), 0);
        assert_eq!(shutdown(), 0);
    }
}
