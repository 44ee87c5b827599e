//! Every WGSL module parses and validates with naga (the compiler inside
//! wgpu), with no adapter needed, and declares every entry point the
//! launch table asks for.

#![cfg(feature = "wgpu")]

use gpurt::backend::wgpu::shader_sources;
use wgpu::naga;

#[test]
fn every_shader_validates() {
    let mut failures = Vec::new();
    for m in shader_sources() {
        let (name, src) = (&m.name, &m.source);
        let module = match naga::front::wgsl::parse_str(src) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: {}", e.emit_to_string(src)));
                continue;
            }
        };
        let mut caps = naga::valid::Capabilities::default();
        if m.subgroups {
            caps |= naga::valid::Capabilities::SUBGROUP;
        }
        let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
        if m.subgroups {
            v.subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all());
        }
        if let Err(e) = v.validate(&module) {
            failures.push(format!("{name}: {}", e.emit_to_string(src)));
            continue;
        }
        for &(want, wg) in &m.entries {
            let found = module.entry_points.iter().find(|e| e.name == want);
            match found {
                None => failures.push(format!("{name}: no entry point '{want}'")),
                Some(e) if e.workgroup_size != [wg, 1, 1] => failures.push(format!(
                    "{name}::{want}: workgroup size {:?}, the launch table assumes {wg}",
                    e.workgroup_size
                )),
                Some(_) => {}
            }
        }
        for e in &module.entry_points {
            if !m.entries.iter().any(|w| w.0 == e.name) {
                failures.push(format!("{name}: entry point '{}' is not listed", e.name));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// Every file under shaders/ is used by some module (nothing stale).
#[test]
fn every_shader_file_is_built() {
    let sources = shader_sources();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let marker = format!("shaders/{stem}.wgsl");
        let used = matches!(stem, "common")
            || sources
                .iter()
                .any(|m| m.name == stem || m.source.contains(&marker));
        assert!(used, "{} is not built into any module", path.display());
    }
}
