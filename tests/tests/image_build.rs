//! `rkubectl image build/push` against a real `docker-registry`: the walkthrough's hello
//! images (1.0.0 and 1.1.0) built from manifests/hello with Debian's busybox-static,
//! their config, shared layers and build cache, pushed and pulled back with the node
//! agent's image store; Dockerfile errors that name the line; and RUN steps run as
//! containers of the node agent's runtime (namespaces, default capabilities, seccomp,
//! a cgroup, the host's network), their output shown, nothing of them left behind.
//!
//! Root (overlay mounts, containers). Its own `main`: the build runs in this process,
//! whose binary doubles as the runtime's `shim` helper. One test also runs the real
//! `rkubectl` from `target/debug` (`cargo build -p rkube-ctl --bin rkubectl`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rkube_ctl::image::{self, BuildOptions, PushOptions, Store};
use rkube_nodeagent::runtime::container::{
    host_capabilities, ALL_CAPABILITIES, DEFAULT_CAPABILITIES,
};
use rkube_tests::node::{clean_up_agent_state, entries, root_test_main, Registry};
use serde_json::json;

fn main() -> std::process::ExitCode {
    root_test_main(
        "image_build",
        &[
            (
                "hello_images_build_share_layers_cache_push_and_pull",
                || Box::pin(hello_images_build_share_layers_cache_push_and_pull()),
            ),
            ("bad_dockerfiles_name_the_line", || {
                Box::pin(bad_dockerfiles_name_the_line())
            }),
            ("run_steps_make_layers_with_files_and_whiteouts", || {
                Box::pin(run_steps_make_layers_with_files_and_whiteouts())
            }),
            ("run_steps_run_in_our_runtime", || {
                Box::pin(run_steps_run_in_our_runtime())
            }),
            ("a_failing_run_step_names_its_command_and_exit_code", || {
                Box::pin(a_failing_run_step_names_its_command_and_exit_code())
            }),
            ("rkubectl_shows_run_output_and_answers_shim", || {
                Box::pin(rkubectl_shows_run_output_and_answers_shim())
            }),
            ("rkubectl_interrupted_in_a_run_step_leaves_nothing", || {
                Box::pin(rkubectl_interrupted_in_a_run_step_leaves_nothing())
            }),
        ],
    )
}

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

async fn run_steps_make_layers_with_files_and_whiteouts() {
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
    let _leftovers = Leftovers(store_dir.path().to_path_buf());
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
    assert_nothing_left(store_dir.path());

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
    assert_nothing_left(store_dir.path());
}

/// This build context: /bin/busybox as `busybox` and `dockerfile` as the Dockerfile.
fn run_context(dockerfile: &str) -> tempfile::TempDir {
    let context = tempfile::tempdir().expect("tempdir");
    std::fs::copy("/bin/busybox", context.path().join("busybox")).expect("copy /bin/busybox");
    std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
    context
}

/// The cgroups of the RUN containers of process `pid` (`rkube/build-<pid>-<n>`), in
/// every mounted hierarchy.
fn run_cgroups(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("build-{pid}-");
    let base = Path::new("/sys/fs/cgroup");
    let parents: Vec<PathBuf> = if base.join("cgroup.controllers").exists() {
        vec![base.join("rkube")]
    } else {
        entries(base)
            .into_iter()
            .map(|h| base.join(h).join("rkube"))
            .collect()
    };
    parents
        .iter()
        .flat_map(|parent| {
            entries(parent)
                .into_iter()
                .filter(|name| name.starts_with(&prefix))
                .map(move |name| parent.join(name))
        })
        .collect()
}

/// Live processes whose command line mentions `text` (the helpers name their bundle).
fn processes_mentioning(text: &str) -> Vec<i32> {
    entries(Path::new("/proc"))
        .into_iter()
        .filter_map(|name| name.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(text))
        })
        .collect()
}

/// Asserts that the RUN steps built with the store at `store` left nothing: no overlay
/// or bundle on disk, no mount, no libcontainer state, no cgroup, no helper.
fn assert_nothing_left(store: &Path) {
    assert_eq!(entries(&store.join("tmp")), Vec::<String>::new(), "tmp");
    for dir in ["containers", "lc", "logs"] {
        assert_eq!(
            entries(&store.join("runtime").join(dir)),
            Vec::<String>::new(),
            "runtime/{dir}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&store.display().to_string()),
        "still mounted under {}",
        store.display()
    );
    assert_eq!(
        run_cgroups(std::process::id()),
        Vec::<PathBuf>::new(),
        "cgroups"
    );
    let text = store.display().to_string();
    assert_eq!(processes_mentioning(&text), Vec::<i32>::new(), "helpers");
}

/// Removes what RUN steps of a build with the store at `.0` left, even when the test
/// failed: helpers and containers killed, overlays unmounted, cgroups removed.
struct Leftovers(PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in processes_mentioning(&self.0.display().to_string()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        clean_up_agent_state(&self.0.join("runtime"));
        for run in entries(&self.0.join("tmp")) {
            let rootfs = self.0.join("tmp").join(run).join("rootfs");
            let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        }
        for cgroup in run_cgroups(std::process::id()) {
            let _ = std::fs::remove_dir(cgroup);
        }
    }
}

/// The value of `field` in a `/proc/<pid>/status` text.
fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// The interface names of a `/proc/net/dev` text, sorted.
fn interfaces(net_dev: &str) -> Vec<String> {
    let mut names: Vec<String> = net_dev
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect();
    names.sort();
    names
}

async fn run_steps_run_in_our_runtime() {
    let context = run_context(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         ENV PATH=/bin\n\
         RUN cat /proc/self/status > /status.txt \
           && grep '^proc /proc ' /proc/mounts > /proc-mount.txt \
           && echo $$ > /pid.txt && hostname > /hostname.txt \
           && cat /proc/net/dev > /net.txt && sleep 1\n",
    );
    let store_dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = Leftovers(store_dir.path().to_path_buf());
    let store = Store::open(store_dir.path()).expect("open store");
    let build = {
        let (store, options) = (store.clone(), options(context.path(), "t/proc:1", "x"));
        tokio::spawn(async move { image::build(&store, options).await })
    };
    // While a step runs, its cgroup exists under its name, holding its processes.
    let mut seen: Vec<String> = Vec::new();
    let mut populated = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !build.is_finished() && Instant::now() < deadline {
        for cgroup in run_cgroups(std::process::id()) {
            let name = cgroup
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            populated |= std::fs::read_to_string(cgroup.join("cgroup.procs"))
                .is_ok_and(|procs| !procs.trim().is_empty());
            if !seen.contains(&name) {
                seen.push(name);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let built = build
        .await
        .expect("build task")
        .expect("build with RUN in our runtime");
    assert!(populated, "no RUN cgroup with processes seen: {seen:?}");
    assert_eq!(built.layers.len(), 3);

    // Neither step keeps the mount points (/proc, /dev, /sys) the runtime needed.
    let installed = layer_entries(&store, &built.layers[1].descriptor.digest);
    assert!(
        installed
            .iter()
            .all(|(path, _)| path == "bin" || path.starts_with("bin/")),
        "{installed:?}"
    );
    assert!(installed.len() > 100, "{installed:?}");
    let files = layer_entries(&store, &built.layers[2].descriptor.digest);
    let mut paths: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
    paths.sort();
    // Exactly what the command wrote.
    assert_eq!(
        paths,
        [
            "hostname.txt",
            "net.txt",
            "pid.txt",
            "proc-mount.txt",
            "status.txt"
        ],
        "{files:?}"
    );
    let file = |name: &str| -> String {
        files
            .iter()
            .find(|(path, _)| path == name)
            .map(|(_, body)| body.clone())
            .unwrap_or_default()
    };
    let status = file("status.txt");
    assert_eq!(status_field(&status, "Seccomp"), Some("2"), "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs"), Some("0"), "{status}");
    let capbnd = status_field(&status, "CapBnd")
        .and_then(|mask| u64::from_str_radix(mask, 16).ok())
        .expect("CapBnd");
    let host = host_capabilities().expect("this process's CapBnd");
    let defaults: u64 = ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(_, name)| DEFAULT_CAPABILITIES.contains(name))
        .map(|(index, _)| 1u64 << index)
        .sum();
    assert_eq!(capbnd, defaults & host, "CapBnd {capbnd:x}");
    assert_ne!(capbnd, host, "the full set of a root process");
    assert!(
        file("proc-mount.txt").starts_with("proc /proc proc "),
        "{}",
        file("proc-mount.txt")
    );
    assert_eq!(
        file("pid.txt"),
        "1\n",
        "the shell is PID 1 of its own namespace"
    );
    let hostname = file("hostname.txt").trim().to_string();
    assert!(
        hostname.starts_with(&format!("build-{}-", std::process::id())),
        "{hostname}"
    );
    assert!(
        seen.contains(&hostname),
        "the step's cgroup is named like it: {hostname} not in {seen:?}"
    );
    // The host's network, as `docker build` gives by default.
    let host_net = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/net/dev");
    assert_eq!(interfaces(&file("net.txt")), interfaces(&host_net));
    assert_nothing_left(store_dir.path());
}

async fn a_failing_run_step_names_its_command_and_exit_code() {
    let context = run_context(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         ENV PATH=/bin\n\
         RUN echo about to fail && exit 3\n",
    );
    let store_dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = Leftovers(store_dir.path().to_path_buf());
    let store = Store::open(store_dir.path()).expect("open store");
    let err = image::build(&store, options(context.path(), "t/fail:1", "x"))
        .await
        .expect_err("RUN exit 3");
    let text = format!("{:#}", anyhow::Error::from(err));
    for part in ["line 5", "echo about to fail && exit 3", "exit code 3"] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    assert!(
        store.list().expect("list").is_empty(),
        "failed builds tag nothing"
    );
    assert_nothing_left(store_dir.path());
}

/// `target/debug/rkubectl` (or under `$CARGO_TARGET_DIR`).
fn rkubectl_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("debug/rkubectl");
    assert!(
        binary.is_file(),
        "{} not built: run `cargo build -p rkube-ctl --bin rkubectl`",
        binary.display()
    );
    binary
}

async fn rkubectl_shows_run_output_and_answers_shim() {
    let context = run_context(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         ENV PATH=/bin\n\
         RUN echo run-output-$((6*7)) && echo run-error-$((6*8)) >&2\n",
    );
    let store_dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = Leftovers(store_dir.path().to_path_buf());
    let mut command = Command::new(rkubectl_binary());
    command
        .args(["image", "build", "-t", "t/out:1", "--image-store"])
        .arg(store_dir.path())
        .arg(context.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("spawn rkubectl");
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait for rkubectl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("built sha256:"), "{stdout}");
    // The command's stdout and stderr, evaluated by its shell, reach the user.
    for line in ["run-output-42", "run-error-48"] {
        assert!(stderr.lines().any(|l| l == line), "{line} not in {stderr}");
    }
    assert_eq!(run_cgroups(pid), Vec::<PathBuf>::new(), "cgroups");
    assert_nothing_left(store_dir.path());
}

async fn rkubectl_interrupted_in_a_run_step_leaves_nothing() {
    let context = run_context(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         ENV PATH=/bin\n\
         RUN echo sleeping && sleep 600\n",
    );
    let store_dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = Leftovers(store_dir.path().to_path_buf());
    let mut child = Command::new(rkubectl_binary())
        .args(["image", "build", "-t", "t/int:1", "--image-store"])
        .arg(store_dir.path())
        .arg(context.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rkubectl");
    let pid = child.id();
    let stderr = child.stderr.take().expect("piped stderr");
    let output = tokio::task::spawn_blocking(move || {
        // The step's output shows once it runs and its interruption is watched.
        let mut reader = BufReader::new(stderr);
        let mut text = String::new();
        while !text.lines().any(|line| line == "sleeping") {
            if reader.read_line(&mut text).expect("read stderr") == 0 {
                break;
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        reader.read_to_string(&mut text).expect("read stderr");
        (text, child.wait().expect("wait for rkubectl"))
    });
    let (stderr, status) = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("rkubectl ends after Ctrl-C")
        .expect("join");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("sleeping"), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    assert_eq!(run_cgroups(pid), Vec::<PathBuf>::new(), "cgroups");
    assert_nothing_left(store_dir.path());
}
