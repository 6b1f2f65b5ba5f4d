//! A home's config.json.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger::home::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = Config::decode(data) {
        let bytes = serde_json::to_vec(&config).expect("encodes");
        assert_eq!(Config::decode(&bytes).expect("round trip"), config);
    }
});
