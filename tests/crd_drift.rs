//! The CRD YAML users apply (crds/) and the chart's copy must be exactly what
//! the code generates. No cluster needed.

mod support;

use streamq::api::crdgen;

/// Every CRD the code generates is the file of its name in `dir`, to the byte.
fn assert_dir_matches_generator(dir: &str) {
    for crd in crdgen::crds() {
        let file = format!("{dir}/{}", crdgen::file_name(&crd));
        assert_eq!(
            support::read(&file),
            crdgen::render_one(&crd).unwrap(),
            "{file} drifted from the code: run `make crds`"
        );
    }
}

#[test]
fn crds_dir_matches_generator() {
    assert_dir_matches_generator("crds");
}

#[test]
fn chart_crds_match_generator() {
    assert_dir_matches_generator("charts/streamq/crds");
}

#[test]
fn docs_reference_matches_generator() {
    assert_eq!(
        support::read("docs/crds.md"),
        crdgen::reference_markdown(),
        "docs/crds.md drifted: run `make crds`"
    );
}

#[test]
fn concatenated_crds_equal_streamq_crd_output() {
    let mut files: Vec<_> = std::fs::read_dir(support::repo_root().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let concatenated: String = files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    let printed = support::streamq_cmd(&["crd"]).output().unwrap();
    assert!(printed.status.success());
    assert_eq!(
        concatenated,
        String::from_utf8(printed.stdout).unwrap(),
        "`streamq crd` != cat crds/*.yaml"
    );
}

/// Client-side `kubectl apply` stores the whole object, as compact JSON, in
/// the last-applied-configuration annotation; annotations are capped at
/// 256 KiB in total. Keep a wide margin.
#[test]
fn each_crd_fits_the_last_applied_annotation() {
    const LIMIT: usize = 256 * 1024;
    for crd in crdgen::crds() {
        let compact = serde_json::to_string(&crd).unwrap().len();
        println!(
            "{}: {compact} bytes as compact JSON",
            crd.metadata.name.as_deref().unwrap()
        );
        assert!(
            compact < LIMIT / 2,
            "{compact} bytes leaves too little margin under {LIMIT}"
        );
    }
}

/// `kubectl explain` reads field descriptions; every field of ours has one.
/// (Inside `spec.template` they are stripped on purpose; see pod_template.rs.)
#[test]
fn every_field_has_a_description() {
    fn check(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if path.ends_with(".spec.template") {
            return;
        }
        let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
            return;
        };
        for (name, sub) in props {
            let p = format!("{path}.{name}");
            // metadata and the root's apiVersion/kind are Kubernetes' own.
            let standard = path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
            if sub.get("description").is_none() && !standard {
                missing.push(p.clone());
            }
            check(&p, sub, missing);
            if let Some(items) = sub.get("items") {
                check(&format!("{p}[]"), items, missing);
            }
        }
    }
    for crd in crdgen::crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        let mut missing = vec![];
        check("", &schema, &mut missing);
        assert!(
            missing.is_empty(),
            "{}: fields without description: {missing:?}",
            crd.metadata.name.unwrap()
        );
    }
}
