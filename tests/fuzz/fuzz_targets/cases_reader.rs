//! Fuzzes the `deepml-cases/1` reader: any bytes must give a file or an error, never a panic or
//! an allocation driven by a declared shape. A file that parses is also written back, read
//! again, and checked against the float64 reference, which must not panic either.
#![no_main]

use deepml_fuzz::cases::{self, Evaluator, ReferenceEvaluator};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = cases::parse(text) else { return };
    let again = cases::parse(&cases::to_json(&file)).expect("a written file reads back");
    assert_eq!(again.cases.len(), file.cases.len());
    for case in file.cases.iter().take(4) {
        // Only small cases: the reference is O(elements) and the fuzzer wants speed.
        let small = case.inputs.values().map(|t| t.data.len()).sum::<usize>() <= 4096;
        if small {
            let got = ReferenceEvaluator.eval(case);
            let _ = cases::check_case(case, got);
        }
    }
});
