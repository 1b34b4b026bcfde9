//! Real software from Debian packages (nginx, Redis, PostgreSQL, Prometheus, Go programs) and
//! its load generators, each server started on loopback by a guard that stops it. The tests
//! and `cargo xtask bench` share it; `cargo xtask test` installs the packages.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running server; dropping it stops the server and removes its scratch directory.
pub struct Service {
    name: String,
    child: Child,
    /// The signal that shuts it down cleanly (PostgreSQL's fast shutdown is SIGINT).
    stop_signal: i32,
    dir: Option<PathBuf>,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL now (a service killed mid-story, as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, self.stop_signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.child.try_wait().ok().flatten().is_none() {
            eprintln!("{} did not stop; killing it", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Panics with the fix when a program the tests need is missing.
fn require(program: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|p| p.join(program)).find(|p| p.exists()));
    found.flatten().unwrap_or_else(|| {
        panic!(
            "{program} is missing: install the Debian package {package} (`cargo xtask test` does)"
        )
    })
}

/// A fresh scratch directory for one service.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connwatch-test-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

fn spawn(name: &str, command: &mut Command, stop_signal: i32, dir: Option<PathBuf>) -> Service {
    let child =
        command.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Service { name: name.into(), child, stop_signal, dir }
}

/// Waits until `port` on 127.0.0.1 accepts connections (the server has no other way to say
/// it is ready). The probe is the test process's own, which connwatch never reports.
pub fn wait_for_port(port: u16, service: &mut Service) {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = service.child.try_wait() {
            panic!("{} exited before listening on {port}: {status}", service.name);
        }
        assert!(Instant::now() < deadline, "{} never listened on {port}", service.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a load generator or client to completion; panics with its output if it fails.
pub fn run(program: &str, package: &str, args: &[&str]) -> Output {
    let output = Command::new(require(program, package))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// nginx (nginx-light) with two workers answering every request with a short body.
pub fn nginx(port: u16) -> Service {
    let nginx = require("nginx", "nginx-light");
    let dir = scratch("nginx");
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200 \"connwatch\\n\"; }}\n  }}\n}}\n"
        ),
    )
    .expect("write nginx.conf");
    let mut service =
        spawn("nginx", Command::new(nginx).arg("-c").arg(&conf), libc::SIGTERM, Some(dir));
    wait_for_port(port, &mut service);
    service
}

/// redis-server without persistence.
pub fn redis(port: u16) -> Service {
    let redis = require("redis-server", "redis-server");
    let dir = scratch("redis");
    let mut command = Command::new(redis);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--protected-mode", "no", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null());
    let mut service = spawn("redis-server", &mut command, libc::SIGTERM, Some(dir));
    wait_for_port(port, &mut service);
    service
}

/// A throwaway PostgreSQL cluster (initdb, trust authentication), run as user postgres.
pub fn postgres(port: u16) -> Service {
    let bin = postgres_bin();
    let dir = scratch("postgres");
    let data = dir.join("data");
    run("chown", "coreutils", &["-R", "postgres:postgres", &dir.display().to_string()]);
    let as_postgres = |program: &Path| {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program)
            .current_dir(&dir);
        command
    };
    let initdb = as_postgres(&bin.join("initdb"))
        .args(["-D", &data.display().to_string(), "-A", "trust", "-U", "postgres", "--no-sync"])
        .output()
        .expect("run initdb");
    assert!(initdb.status.success(), "initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
    let mut command = as_postgres(&bin.join("postgres"));
    command
        .args(["-D", &data.display().to_string(), "-p", &port.to_string()])
        .args(["-k", &dir.display().to_string(), "-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off", "-c", "max_connections=50"])
        .stderr(Stdio::null());
    let mut service = spawn("postgres", &mut command, libc::SIGINT, Some(dir));
    wait_for_port(port, &mut service);
    let deadline = Instant::now() + START_TIMEOUT;
    let port = port.to_string();
    // Listening is not ready: the cluster may still be starting up.
    while !Command::new(bin.join("pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &port, "-q"])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "PostgreSQL never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    service
}

/// Prometheus (Debian's `prometheus`) scraping `target` every second, its API on `listen`.
pub fn prometheus(listen: &str, target: &str) -> Service {
    let prometheus = require("prometheus", "prometheus");
    let dir = scratch("prometheus");
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: connwatch\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .expect("write prometheus.yml");
    let mut command = Command::new(prometheus);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut service = spawn("prometheus", &mut command, libc::SIGTERM, Some(dir));
    let port: u16 = listen.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
    wait_for_port(port, &mut service);
    service
}

/// The newest installed PostgreSQL's bin directory.
pub fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().filter(|bin| bin.join("postgres").exists()).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is missing: install the Debian package postgresql (`cargo xtask test` does)"
        )
    })
}

/// The test Go program (tests/go/cwgo.go), built once per test run with Debian's golang-go.
pub fn cwgo() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let go = require("go", "golang-go");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = std::env::temp_dir().join(format!("connwatch-cwgo-{}", std::process::id()));
        let cache = std::env::temp_dir().join("connwatch-go-cache");
        let output = Command::new(go)
            .args(["build", "-o"])
            .arg(&out)
            .arg(root.join("../go/cwgo.go"))
            .env("GOCACHE", &cache)
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .output()
            .expect("run go build");
        assert!(output.status.success(), "go build: {}", String::from_utf8_lossy(&output.stderr));
        out
    })
}

/// A cwgo mode, started (inside network namespace `netns` when given) and waited for until it
/// says `ready`.
pub fn go_service(netns: Option<&str>, args: &[&str]) -> Service {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(cwgo());
            c
        }
        None => Command::new(cwgo()),
    };
    command.args(args).stdout(Stdio::piped());
    let mut service = spawn(&format!("cwgo {}", args[0]), &mut command, libc::SIGKILL, None);
    let stdout = service.child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read cwgo's stdout");
    assert_eq!(line.trim(), "ready", "cwgo {args:?} did not get ready");
    service
}
