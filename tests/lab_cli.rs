//! `tapestry lab` as a user runs it: unprivileged, both underlays, the JSON report.
use std::process::Command;

fn lab(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tapestry"))
        .arg("lab")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn lab_report_in_memory_and_on_loopback() {
    for underlay in ["memory", "loopback"] {
        let (ok, out, err) = lab(&[
            "--cells",
            "5",
            "--containers",
            "40",
            "--underlay",
            underlay,
            "--json",
        ]);
        assert!(ok, "{underlay}: {out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cells"], 5);
        assert_eq!(v["containers"], 40);
        assert_eq!(v["policies"], 80, "tcp and udp from each app to the next");
        assert_eq!(v["allowed"], 80);
        assert_eq!(v["allowed_answered"], 80, "{v}");
        assert_eq!(v["denied"], 40);
        assert_eq!(v["denied_answered"], 0, "{v}");
        assert!(v["drops"]["policy_denied"].as_u64().unwrap() >= 40, "{v}");
        assert!(v["ready_ms"].as_f64().unwrap() > 0.0);
        assert!(v["peak_rss_kib"].as_u64().unwrap() > 0);
        assert_eq!(v["ok"], true);
    }
}

#[test]
fn lab_text_report_and_bad_arguments() {
    let (ok, out, err) = lab(&["--cells", "2", "--containers", "6", "--underlay", "memory"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("every container reachable by its allowed peers after"),
        "{out}"
    );
    assert!(out.contains("memory:"), "{out}");
    let (ok, _, err) = lab(&["--cells", "1", "--containers", "400"]);
    assert!(!ok);
    assert!(err.contains("does not fit"), "{err}");
    let (ok, _, err) = lab(&["--underlay", "wire"]);
    assert!(!ok);
    assert!(err.contains("not one of loopback, memory"), "{err}");
}
