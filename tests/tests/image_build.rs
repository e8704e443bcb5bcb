//! `rkubectl image build/push` against a real `docker-registry`: the walkthrough's hello
//! images (1.0.0 and 1.1.0) built from manifests/hello with Debian's busybox-static,
//! their config, shared layers and build cache, pushed and pulled back with the node
//! agent's image store; and Dockerfile errors that name the line.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rkube_ctl::image::{self, BuildOptions, PushOptions, Store};
use rkube_tests::node::Registry;
use serde_json::json;

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/hello");

/// Copies `from` into `to`, keeping symlinks as symlinks.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("mkdir {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A temporary build context: manifests/hello plus /bin/busybox as `busybox`.
fn hello_context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(Path::new(HELLO), dir.path()).expect("copy manifests/hello");
    // A busybox a developer copied into manifests/hello must not matter.
    let _ = std::fs::remove_file(dir.path().join("busybox"));
    std::fs::copy("/bin/busybox", dir.path().join("busybox"))
        .expect("copy /bin/busybox (apt-get install busybox-static)");
    dir
}

fn options(context: &Path, tag: &str, version: &str) -> BuildOptions {
    BuildOptions {
        context: context.to_path_buf(),
        dockerfile: None,
        tags: vec![tag.to_string()],
        build_args: [("VERSION".to_string(), version.to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn hello_images_build_share_layers_cache_push_and_pull() {
    let context = hello_context();
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(store_dir.path()).expect("open store");
    let registry = Registry::start().await.expect("start docker-registry");
    let v1 = format!("{}/hello:1.0.0", registry.addr);
    let v2 = format!("{}/hello:1.1.0", registry.addr);

    let one = image::build(&store, options(context.path(), &v1, "1.0.0"))
        .await
        .expect("build 1.0.0");
    let two = image::build(&store, options(context.path(), &v2, "1.1.0"))
        .await
        .expect("build 1.1.0");
    assert_eq!((one.layer_steps, one.cached_steps), (3, 0));
    // busybox and its links come from the cache; only the page is new.
    assert_eq!((two.layer_steps, two.cached_steps), (3, 2));
    assert_eq!(one.layers.len(), 3);
    assert_eq!(
        one.layers[..2],
        two.layers[..2],
        "the busybox layers are shared"
    );
    assert_ne!(one.layers[2], two.layers[2], "the pages differ");
    assert_ne!(one.manifest.digest, two.manifest.digest);

    let (manifest, config) = image::build::read_image(&store, &one.manifest).expect("read 1.0.0");
    assert_eq!(manifest.layers.len(), 3);
    let c = &config["config"];
    assert_eq!(
        c["Cmd"],
        json!(["httpd", "-f", "-v", "-p", "80", "-h", "/www"])
    );
    assert_eq!(c["ExposedPorts"], json!({"80/tcp": {}}));
    assert_eq!(c["Env"], json!(["PATH=/bin"]));
    assert_eq!(
        c["Labels"]["org.opencontainers.image.version"],
        json!("1.0.0")
    );
    let diff_ids: Vec<_> = one.layers.iter().map(|l| json!(l.diff_id)).collect();
    assert_eq!(config["rootfs"]["diff_ids"], json!(diff_ids));
    let (_, config2) = image::build::read_image(&store, &two.manifest).expect("read 1.1.0");
    assert_eq!(
        config2["config"]["Labels"]["org.opencontainers.image.version"],
        json!("1.1.0")
    );

    // A second build changes nothing and takes every layer from the cache.
    let started = Instant::now();
    let again = image::build(&store, options(context.path(), &v1, "1.0.0"))
        .await
        .expect("rebuild 1.0.0");
    println!(
        "rebuild of hello:1.0.0 took {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!((again.layer_steps, again.cached_steps), (3, 3));
    assert_eq!(again.manifest.digest, one.manifest.digest);

    // Push both; the second push finds the shared blobs in the registry.
    let push_options = PushOptions::default();
    let pushed1 = image::push(&store, &v1, &push_options)
        .await
        .expect("push 1.0.0");
    assert_eq!(pushed1.digest, one.manifest.digest);
    assert_eq!((pushed1.pushed_blobs, pushed1.skipped_blobs), (4, 0));
    let pushed2 = image::push(&store, &v2, &push_options)
        .await
        .expect("push 1.1.0");
    assert_eq!(pushed2.digest, two.manifest.digest);
    assert_eq!((pushed2.pushed_blobs, pushed2.skipped_blobs), (2, 2));
    let repushed = image::push(&store, &v1, &push_options)
        .await
        .expect("push 1.0.0 again");
    assert_eq!((repushed.pushed_blobs, repushed.skipped_blobs), (0, 4));

    // FROM the pushed image: its layers, unchanged, under a new one; its config inherited.
    let derived_context = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        derived_context.path().join("Dockerfile"),
        format!("FROM {v1}\nENV MODE=derived\nCOPY extra.html /www/\n"),
    )
    .expect("write Dockerfile");
    std::fs::write(derived_context.path().join("extra.html"), "extra\n").expect("write");
    let derived_store_dir = tempfile::tempdir().expect("tempdir");
    let derived_store = Store::open(derived_store_dir.path()).expect("open store");
    let derived = image::build(
        &derived_store,
        BuildOptions {
            context: derived_context.path().to_path_buf(),
            tags: vec!["t/derived:1".into()],
            ..Default::default()
        },
    )
    .await
    .expect("build FROM the pushed image");
    assert_eq!(derived.layers.len(), 4);
    assert_eq!(derived.layers[..3], one.layers[..]);
    let (_, derived_config) =
        image::build::read_image(&derived_store, &derived.manifest).expect("read derived");
    let c = &derived_config["config"];
    assert_eq!(c["Env"], json!(["PATH=/bin", "MODE=derived"]));
    assert_eq!(
        c["Cmd"],
        json!(["httpd", "-f", "-v", "-p", "80", "-h", "/www"])
    );
    assert_eq!(c["ExposedPorts"], json!({"80/tcp": {}}));

    // The node agent pulls them back with the digests the build made.
    let pull_dir = tempfile::tempdir().expect("tempdir");
    let agent_store = rkube_nodeagent::runtime::image::ImageStore::open(
        pull_dir.path().to_path_buf(),
        vec![registry.addr.clone()],
    )
    .expect("open the agent's image store");
    for (reference, built, page) in [(&v1, &one, "version 1.0.0"), (&v2, &two, "version 1.1.0")] {
        let record = agent_store.pull(reference).await.expect("pull");
        assert!(
            record
                .image_id
                .ends_with(&format!("@{}", built.manifest.digest)),
            "{} vs {}",
            record.image_id,
            built.manifest.digest
        );
        let digests: Vec<_> = built
            .layers
            .iter()
            .map(|l| l.descriptor.digest.clone())
            .collect();
        assert_eq!(record.layers, digests);
        assert_eq!(
            record.config.cmd,
            vec!["httpd", "-f", "-v", "-p", "80", "-h", "/www"]
        );
        let html = std::fs::read_to_string(
            agent_store
                .layer_dir(&record.layers[2])
                .join("www/hello.html"),
        )
        .expect("read the unpacked page");
        assert!(html.contains(page), "{html}");
        let link = std::fs::read_link(agent_store.layer_dir(&record.layers[1]).join("bin/httpd"))
            .expect("bin/httpd is a link");
        assert_eq!(link, Path::new("busybox"));
        let busybox = std::fs::read(agent_store.layer_dir(&record.layers[0]).join("bin/busybox"))
            .expect("read the unpacked busybox");
        assert_eq!(
            busybox,
            std::fs::read("/bin/busybox").expect("read /bin/busybox")
        );
    }
}

#[tokio::test]
async fn bad_dockerfiles_name_the_line() {
    let cases = [
        (
            "FROM scratch\nCOPY busybox /bin/\nFROBNICATE now\n",
            "line 3",
            "unknown instruction FROBNICATE",
        ),
        (
            "FROM scratch\n\n# comment\nCOPY nothing-here /x\n",
            "line 4",
            "nothing-here",
        ),
        (
            "FROM scratch\nCOPY ../../etc/passwd /x\n",
            "line 2",
            "outside the build context",
        ),
        (
            "FROM scratch\nCMD [\"a\"]\nEXPOSE 80/http\n",
            "line 3",
            "invalid port",
        ),
    ];
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(store_dir.path()).expect("open store");
    for (dockerfile, line, message) in cases {
        let context = tempfile::tempdir().expect("tempdir");
        std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("write");
        std::fs::write(context.path().join("busybox"), "x").expect("write");
        let err = image::build(&store, options(context.path(), "t/bad:1", "1"))
            .await
            .expect_err(dockerfile);
        let text = format!("{err:#}");
        assert!(
            text.contains(line) && text.contains(message),
            "{dockerfile:?}: {text}"
        );
    }
    assert!(
        store.list().expect("list").is_empty(),
        "failed builds tag nothing"
    );
}

/// The paths and contents (files), link targets (symlinks) of a stored layer blob.
fn layer_entries(store: &Store, digest: &str) -> Vec<(String, String)> {
    let blob = store.read_blob(digest).expect("read layer blob");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob.as_slice()));
    let mut entries = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let body = match entry.link_name().expect("link") {
            Some(link) => format!("-> {}", link.display()),
            None => {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).unwrap_or_default();
                text
            }
        };
        entries.push((path, body));
    }
    entries
}

#[tokio::test]
async fn run_steps_make_layers_with_files_and_whiteouts() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: RUN needs root (overlay mounts)");
        return;
    }
    let context = tempfile::tempdir().expect("tempdir");
    std::fs::copy("/bin/busybox", context.path().join("busybox")).expect("copy /bin/busybox");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         ENV PATH=/bin\n\
         ARG GREETING=made-by-run\n\
         WORKDIR /data\n\
         RUN echo $GREETING > made.txt && mkdir -p /etc && echo old > /etc/old\n\
         RUN rm /etc/old\n\
         CMD [\"cat\", \"/data/made.txt\"]\n",
    )
    .expect("write Dockerfile");
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(store_dir.path()).expect("open store");
    let built = image::build(&store, options(context.path(), "t/run:1", "x"))
        .await
        .expect("build with RUN");
    assert_eq!(built.layers.len(), 4);
    let install = layer_entries(&store, &built.layers[1].descriptor.digest);
    assert!(
        install.contains(&("bin/sh".to_string(), "-> /bin/busybox".to_string())),
        "{install:?}"
    );
    let made = layer_entries(&store, &built.layers[2].descriptor.digest);
    assert!(
        made.contains(&("data/made.txt".to_string(), "made-by-run\n".to_string())),
        "{made:?}"
    );
    assert!(
        made.contains(&("etc/old".to_string(), "old\n".to_string())),
        "{made:?}"
    );
    let removed = layer_entries(&store, &built.layers[3].descriptor.digest);
    assert!(
        removed.iter().any(|(path, _)| path == "etc/.wh.old"),
        "{removed:?}"
    );
    assert!(
        !removed.iter().any(|(path, _)| path == "etc/old"),
        "{removed:?}"
    );
    // Nothing of the overlays is left mounted or on disk.
    let tmp: Vec<_> = std::fs::read_dir(store_dir.path().join("tmp"))
        .expect("read tmp")
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&store_dir.path().display().to_string()),
        "an overlay is still mounted"
    );

    // The RUN steps come from the cache the second time.
    let again = image::build(&store, options(context.path(), "t/run:1", "x"))
        .await
        .expect("rebuild");
    assert_eq!((again.layer_steps, again.cached_steps), (4, 4));
    assert_eq!(again.manifest.digest, built.manifest.digest);

    // A failing command fails the build, naming the line.
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n",
    )
    .expect("write Dockerfile");
    let err = image::build(&store, options(context.path(), "t/run:2", "x"))
        .await
        .expect_err("RUN false");
    let text = format!("{err:#}");
    assert!(text.contains("line 3") && text.contains("failed"), "{text}");
}
