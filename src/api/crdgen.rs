//! Renders the CRDs. `streamq crd` prints them, `crds/` and the chart hold
//! the output, and a test fails when those copies drift from the code.

use std::{io, path::Path};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::{Consumer, Queue};

/// Every CRD, in the order of their file names, so `cat crds/*.yaml` equals [`render`].
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Consumer::crd(), Queue::crd()].into_iter().map(normalize_integer_formats).collect()
}

/// schemars marks unsigned integers with formats like `uint32`, which the API
/// server does not know and warns about on every apply. They become `int64`;
/// the `minimum: 0` schemars also emits keeps them non-negative.
fn normalize_integer_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    super::for_each_object(&mut value, &mut |map| {
        if map.get("format").and_then(|f| f.as_str()).is_some_and(|f| f.starts_with("uint")) {
            map.insert("format".into(), "int64".into());
        }
    });
    serde_json::from_value(value).expect("a CRD with other formats still deserializes")
}

/// The file `crds/` keeps a CRD in: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as a YAML document, starting with `---`.
pub fn render_one(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!("---\n{}", serde_yaml::to_string(crd)?))
}

/// All CRDs as one multi-document YAML stream.
pub fn render() -> Result<String, serde_yaml::Error> {
    crds().iter().map(render_one).collect()
}

/// Writes each CRD to `<dir>/<plural>.<group>.yaml`.
pub fn write_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for crd in crds() {
        let yaml = render_one(&crd).map_err(io::Error::other)?;
        std::fs::write(dir.join(file_name(&crd)), yaml)?;
    }
    Ok(())
}

/// `streamq crd`: print every CRD, or write them into `dir`.
pub fn print_or_write(dir: Option<&Path>) -> io::Result<()> {
    match dir {
        Some(dir) => write_dir(dir),
        None => {
            print!("{}", render().map_err(io::Error::other)?);
            Ok(())
        }
    }
}
