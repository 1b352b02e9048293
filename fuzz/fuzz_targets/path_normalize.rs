//! Request paths: normalization never panics, and what it accepts is a fixed point with no
//! dot-segment, no empty segment and no path parameter hiding a dot-segment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_contract::path::{PathOptions, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    for allow_encoded_slashes in [false, true] {
        let options = PathOptions {
            allow_encoded_slashes,
        };
        let Ok(t) = normalize(target, options) else {
            continue;
        };
        assert!(t.path.starts_with('/'), "{target:?} -> {:?}", t.path);
        let again = normalize(&t.path, options).expect("a normalized path normalizes");
        assert_eq!(again.path, t.path, "normalizing twice changes {target:?}");
        for segment in t.path.split('/').skip(1) {
            let name = segment.split(';').next().unwrap_or_default();
            assert!(name != "." && name != "..", "{target:?} -> {:?}", t.path);
        }
        assert!(!t.path.contains("//"), "{target:?} -> {:?}", t.path);
        let policy = t.policy_path();
        assert!(!policy.contains(';'));
    }
});
