//! Test component: a valid WebAssembly component that exports `acme:greeter/greeter` instead of
//! the risk classifier. The host's upload validation must reject it.

wit_bindgen::generate!({
    path: "wit",
    world: "greeter-world",
});

use exports::acme::greeter::greeter::Guest;

struct Greeter;

impl Guest for Greeter {
    fn greet() -> String {
        "hello from a component that is not a risk plugin".to_string()
    }
}

export!(Greeter);
