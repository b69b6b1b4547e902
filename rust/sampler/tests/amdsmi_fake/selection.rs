//! Which AMD GPUs are measured, and by what: `ROCR_VISIBLE_DEVICES` then `HIP_VISIBLE_DEVICES`,
//! amdgpu hwmon without AMD SMI and as its alternative, beside an NVIDIA GPU of the same index,
//! and for processes sharing the node's sampler.

use std::time::Duration;

use carbonctx_sampler::amd;
use carbonctx_sampler::discover::{self, Options};
use carbonctx_sampler::{Domain, Found, Method, Reading};

use super::Machine;
use crate::common_nvml::{reasons, sim_with_gpus, FakeNvml, TRACE};

#[test]
fn rocr_filters_first_and_hip_indexes_what_is_left() {
    let m = Machine::new(
        "devices=4\ngpu0.bdf=0000:03:00.0\ngpu1.bdf=0000:23:00.0\n\
         gpu2.bdf=0000:43:00.0\ngpu3.bdf=0000:63:00.0\n",
    );
    m.kfd(&[
        ("0000:03:00.0", 0xaaaa),
        ("0000:23:00.0", 0xbbbb),
        ("0000:43:00.0", 0xcccc),
        ("0000:63:00.0", 0xdddd),
    ]);
    let indices = |f: &Found| {
        let mut v: Vec<u32> = f.sources.iter().map(|s| s.info().index).collect();
        v.sort();
        v
    };
    assert_eq!(indices(&m.discover(Some("3,1"), Some("1"))), [1]);
    assert_eq!(indices(&m.discover(Some("GPU-000000000000CC"), None)), [2]);
    assert_eq!(indices(&m.discover(None, Some("0,2"))), [0, 2]);
    let found = m.discover(Some("2,9,0"), None);
    assert_eq!(indices(&found), [2]);
    assert!(reasons(&found).contains("ROCR_VISIBLE_DEVICES entry \"9\""));
    let found = m.discover(Some(""), None);
    assert!(found.sources.is_empty());
    assert!(reasons(&found).contains("leave no AMD GPU visible"));
    // What a process sharing the node's sampler sees among the published GPUs.
    let published: Vec<(u32, Option<String>)> = (0..4)
        .map(|i| {
            (
                i,
                Some(format!(
                    "GPU-000000000000{}",
                    ["AAAA", "BBBB", "CCCC", "DDDD"][i as usize]
                )),
            )
        })
        .collect();
    let (v, _) = amd::visible_among(&published, Some("GPU-000000000000DD,0"), Some("1"));
    assert_eq!(v, [0]);
}

#[test]
fn without_amd_smi_hwmon_measures_and_with_it_hwmon_is_an_alternative() {
    let m = Machine::new("devices=1\ngpu0.bdf=0000:c1:00.0\n");
    m.kfd(&[("0000:c1:00.0", 0x77)]);
    m.hwmon(2, "0000:c1:00.0", Some(("power1_average", 187_000_000)));
    // A second amdgpu whose hwmon has no power file (a paired die's), and one reading 0.
    m.hwmon(3, "0000:c4:00.0", None);
    m.hwmon(4, "0000:c7:00.0", Some(("power1_input", 0)));
    let mut opts = m.options();
    opts.amdsmi_library = Some(m.dir.path().join("missing/libamd_smi.so"));
    let mut d = discover::discover(&opts);
    let chosen: Vec<_> = d.chosen.iter().map(|s| s.info().clone()).collect();
    assert_eq!(chosen.len(), 1, "{:?}", d.unavailable);
    let h = &chosen[0];
    assert_eq!(h.id, "hwmon:amdgpu:0000:c1:00.0:power1");
    assert_eq!(h.backend, "hwmon");
    assert_eq!(h.method, Method::IntegratedPower);
    assert_eq!(h.uuid.as_deref(), Some("GPU-0000000000000077"));
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(187.0));
    let text: Vec<String> = d.unavailable.iter().map(|u| u.reason.clone()).collect();
    assert!(
        text.iter()
            .any(|r| r.contains("cannot load the AMD SMI library")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|r| r.contains("no power1_input or power1_average")),
        "{text:?}"
    );
    assert!(text.iter().any(|r| r.contains("reads 0 W")), "{text:?}");
    // With AMD SMI: it measures; hwmon is listed as the alternative for the same GPU.
    let d = discover::discover(&m.options());
    let chosen: Vec<String> = d.chosen.iter().map(|s| s.info().id.clone()).collect();
    assert_eq!(chosen, ["amdsmi:0"]);
    let alts: Vec<String> = d.alternatives.iter().map(|i| i.id.clone()).collect();
    assert_eq!(alts, ["hwmon:amdgpu:0000:c1:00.0:power1"]);
}

#[test]
fn an_amd_and_an_nvidia_gpu_with_the_same_index_are_both_measured() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true), TRACE.gpu(true)], 20, 20);
    let nv = FakeNvml::new(&format!("{}devices=1\n", sim.nvml_config().expect("gpus")));
    let m = Machine::for_sim(&sim, &[1], "");
    let mut opts = m.options();
    opts.nvml = true;
    opts.roots.nvml_library = Some(nv.lib.clone());
    let d = discover::discover(&opts);
    let mut chosen: Vec<(String, u32)> = d
        .chosen
        .iter()
        .map(|s| (s.info().id.clone(), s.info().index))
        .collect();
    chosen.sort();
    assert_eq!(
        chosen,
        [("amdsmi:0".to_string(), 0), ("nvml:0".to_string(), 0)]
    );
    assert!(d.alternatives.is_empty());
}

#[test]
fn processes_sharing_the_nodes_sampler_report_the_amd_gpus_they_see() {
    use carbonctx_sampler::{Config, NodeConfig, Role, Sampler};
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true), TRACE.gpu(true)], 20, 20);
    let m = Machine::for_sim(
        &sim,
        &[0, 1],
        "gpu0.bdf=0000:03:00.0\ngpu1.bdf=0000:83:00.0\n",
    );
    m.kfd(&[("0000:03:00.0", 0xaa), ("0000:83:00.0", 0xbb)]);
    let shm = tempfile::tempdir().unwrap();
    let node = NodeConfig {
        takeover_poll: Duration::from_millis(100),
        ..NodeConfig::new("job-amd alice boot-x").in_dir(shm.path())
    };
    let start = |rocr: Option<&str>, hip: Option<&str>| {
        let opts = Options {
            rocr_visible_devices: rocr.map(str::to_string),
            hip_visible_devices: hip.map(str::to_string),
            ..m.options()
        };
        let (s, unavailable) =
            Sampler::start_on_node(opts, Config::default(), node.clone()).expect("start");
        (s, unavailable)
    };
    let gpu_ids = |s: &Sampler| -> Vec<String> {
        s.sources()
            .iter()
            .filter(|i| i.domain == Domain::Gpu)
            .map(|i| i.id.clone())
            .collect()
    };
    // The owner reads every GPU of the node; this process reports only the one it sees.
    let (owner, _) = start(Some("1"), None);
    assert_eq!(owner.node_status().unwrap().role, Role::Owner);
    assert_eq!(owner.node_status().unwrap().node_sources.len(), 2);
    assert_eq!(gpu_ids(&owner), ["amdsmi:1"]);
    let (by_uuid, _) = start(Some("GPU-00000000000000AA"), None);
    assert_eq!(by_uuid.node_status().unwrap().role, Role::Follower);
    assert_eq!(gpu_ids(&by_uuid), ["amdsmi:0"]);
    let (hip, _) = start(None, Some("1,0"));
    assert_eq!(gpu_ids(&hip), ["amdsmi:0", "amdsmi:1"]);
    let (bad, unavailable) = start(Some("5"), None);
    assert!(gpu_ids(&bad).is_empty());
    assert!(
        unavailable
            .iter()
            .any(|u| u.what.contains("ROCR_VISIBLE_DEVICES entry")),
        "{unavailable:?}"
    );
    for s in [&bad, &hip, &by_uuid, &owner] {
        s.stop();
    }
}
