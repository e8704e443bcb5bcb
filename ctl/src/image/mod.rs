//! Images of your own: [`build`] turns a Dockerfile and its context into an OCI image
//! in the local [`store`] (an OCI image layout directory) with reproducible,
//! cache-reused [`layer`]s, and [`push`] sends it to a registry. Start with
//! [`build::build`]; the Dockerfile grammar is in [`dockerfile`].

pub mod build;
pub mod dockerfile;
pub mod layer;
pub mod pull;
pub mod push;
pub mod run;
pub mod store;

pub use build::{build, BuildOptions, BuildOutput};
pub use push::{push, PushOptions, PushReport};
pub use store::Store;

/// The full name of `reference` (`hello` → `docker.io/library/hello:latest`,
/// `127.0.0.1:5000/hello:1` unchanged), or `None` when it does not parse.
pub fn normalize(reference: &str) -> Option<String> {
    reference
        .parse::<oci_client::Reference>()
        .ok()
        .map(|r| r.whole())
}

/// This machine's architecture in OCI terms (`amd64`, `arm64`, …).
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalizes_references() {
        let cases = [
            ("hello", Some("docker.io/library/hello:latest")),
            (
                "127.0.0.1:5000/hello:1.0.0",
                Some("127.0.0.1:5000/hello:1.0.0"),
            ),
            ("Bad Ref", None),
        ];
        for (input, want) in cases {
            assert_eq!(super::normalize(input).as_deref(), want, "{input}");
        }
    }
}
