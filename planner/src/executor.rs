//! Where a search's units of work ([`crate::unit`]) run.
//!
//! * `local` with `--workers K` (K ≥ 2; by default one per core, up to the
//!   population, on the CPU): up to K child processes (`delphi-plan step
//!   --unit DIR`) at once, each with its share of the cores
//!   (`RAYON_NUM_THREADS`).
//! * `local` with one worker: in this process, one after another — through
//!   the same files as any executor, so what a unit computes does not
//!   depend on where it ran.
//! * `ray`: every unit a task on a Ray cluster, through a small driver
//!   built into this binary (`planner/ray/driver.py`, Ray's own Python
//!   API), started once per search.
//!
//! Why a Python driver and not Ray's Jobs REST API from Rust: a Ray job is
//! a driver process of its own (seconds to start, on the head node) whose
//! tasks would still need this driver's logic; tasks are what units are,
//! and Ray's task API gives scheduling by CPUs and GPUs, retries on a
//! failed or lost worker and cancellation when the controller goes away,
//! for about a hundred lines with no dependency besides `ray`.
//!
//! Every executor retries a unit that fails (a worker killed, a node
//! lost) up to `--retries` times; each attempt is a line of the unit's
//! `attempts.log`, and the controller writes the retries into the
//! search's lineage log.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{file_err, PlanError, Result};
use crate::unit::UnitDir;

/// Which executor runs the units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// This machine: in this process (one worker) or child processes.
    #[default]
    Local,
    /// A Ray cluster (`--ray-address`).
    Ray,
}

/// How a search's units run (not part of the search's identity: a search
/// may be resumed with another executor and gives the same front).
#[derive(Clone, Debug, PartialEq)]
pub struct ExecConfig {
    /// The executor.
    pub kind: ExecutorKind,
    /// Local: processes at once (1: in this process; the library's
    /// default, where `delphi-plan` defaults to one per core up to the
    /// population on the CPU). Ray: units in flight at once (0: all of an
    /// interval).
    pub workers: usize,
    /// Retries of a failed unit.
    pub retries: usize,
    /// The `delphi-plan` the workers run (default: this executable; on a
    /// cluster it must be at this path on every node).
    pub program: Option<PathBuf>,
    /// Ray: the cluster's address (`host:port`, or `auto`).
    pub ray_address: Option<String>,
    /// Ray: the Python with `ray` installed.
    pub ray_python: PathBuf,
    /// Ray: CPUs each unit asks for.
    pub ray_cpus: f64,
    /// Ray: GPUs each unit asks for.
    pub ray_gpus: f64,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            kind: ExecutorKind::Local,
            workers: 1,
            retries: 2,
            program: None,
            ray_address: None,
            ray_python: PathBuf::from("python3"),
            ray_cpus: 1.0,
            ray_gpus: 0.0,
        }
    }
}

impl ExecConfig {
    /// Checks the settings.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.kind == ExecutorKind::Local && self.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        if self.kind == ExecutorKind::Ray && self.ray_address.is_none() {
            return Err("--executor ray needs --ray-address (host:port of the cluster's head, \
                        or auto)"
                .into());
        }
        if !(self.ray_cpus > 0.0 && self.ray_gpus >= 0.0) {
            return Err("--ray-cpus must be positive and --ray-gpus at least 0".into());
        }
        Ok(())
    }

    /// Whether units run in this process.
    pub fn in_process(&self) -> bool {
        self.kind == ExecutorKind::Local && self.workers <= 1
    }

    /// A short description for progress lines.
    pub fn describe(&self) -> String {
        match self.kind {
            ExecutorKind::Local if self.workers <= 1 => "this process".into(),
            ExecutorKind::Local => format!("{} local worker processes", self.workers),
            ExecutorKind::Ray => format!(
                "Ray at {} ({} CPU, {} GPU per unit)",
                self.ray_address.as_deref().unwrap_or("?"),
                self.ray_cpus,
                self.ray_gpus
            ),
        }
    }

    fn program(&self) -> Result<PathBuf> {
        match &self.program {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe().map_err(|e| {
                PlanError::Config(format!("cannot find this executable for the workers ({e})"))
            }),
        }
    }
}

/// A unit that failed every attempt.
fn unit_failed(dir: &UnitDir, attempts: usize, why: &str) -> PlanError {
    PlanError::Config(format!(
        "unit {} failed {attempts} times; the last: {why} (rerun the same command to resume \
         from the last finished interval)",
        dir.0.display()
    ))
}

/// The last `n` bytes of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let t = std::fs::read(path).unwrap_or_default();
    let s = String::from_utf8_lossy(&t[t.len().saturating_sub(n)..]).into_owned();
    s.trim().to_string()
}

/// Child processes that are killed if the controller stops early.
struct Running(Vec<(usize, usize, Child)>);

impl Drop for Running {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes a child process receive SIGKILL when the thread that started it
/// ends (the controller killed or failed): no worker outlives its search.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the
    // parent; the closure runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `units` as child processes, `workers` at once, each retried up to
/// `retries` times. Returns when every unit has a result, with each
/// unit's seconds from its (last) process's start to its exit.
pub fn run_local(units: &[UnitDir], c: &ExecConfig) -> Result<Vec<f64>> {
    let program = c.program()?;
    let workers = c.workers.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / workers).max(1).to_string();
    let mut queue: std::collections::VecDeque<(usize, usize)> =
        (0..units.len()).map(|i| (i, 1)).collect();
    let mut running = Running(Vec::new());
    let mut started = vec![Instant::now(); units.len()];
    let mut wall = vec![0.0; units.len()];
    while !queue.is_empty() || !running.0.is_empty() {
        while running.0.len() < workers {
            let Some((i, attempt)) = queue.pop_front() else { break };
            let d = &units[i];
            let log = std::fs::File::create(d.log()).map_err(|e| file_err(&d.log(), e))?;
            let mut cmd = Command::new(&program);
            die_with_parent(&mut cmd);
            let child = cmd
                .arg("step")
                .arg("--unit")
                .arg(&d.0)
                .env("RAYON_NUM_THREADS", &threads)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    PlanError::Config(format!(
                        "starting the worker {} ({e}); set --worker-program",
                        program.display()
                    ))
                })?;
            started[i] = Instant::now();
            running.0.push((i, attempt, child));
        }
        let mut k = 0;
        let mut progressed = false;
        while k < running.0.len() {
            let status = running.0[k]
                .2
                .try_wait()
                .map_err(|e| PlanError::Config(format!("waiting for a worker process ({e})")))?;
            let Some(status) = status else {
                k += 1;
                continue;
            };
            progressed = true;
            let (i, attempt, _) = running.0.swap_remove(k);
            let d = &units[i];
            if status.success() && d.result().is_file() {
                wall[i] = started[i].elapsed().as_secs_f64();
                continue;
            }
            let why = format!("{status}: {}", tail(&d.log(), 2000));
            d.note_failure(&why);
            if attempt > c.retries {
                return Err(unit_failed(d, attempt, &why));
            }
            queue.push_back((i, attempt + 1));
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(wall)
}

/// What the driver says first.
#[derive(Debug, Deserialize)]
struct Ready {
    ray: String,
    nodes: usize,
    cpus: f64,
    gpus: f64,
}

/// One unit's outcome, as the driver reports it.
#[derive(Debug, Deserialize)]
struct DriverResult {
    unit: String,
    ok: bool,
    #[serde(default)]
    error: String,
    /// From the task's submission to its result.
    #[serde(default)]
    seconds: f64,
}

#[derive(Debug, Deserialize)]
struct DriverAnswer {
    results: Vec<DriverResult>,
}

/// The Ray driver: a Python process this search talks to over pipes.
pub struct RayDriver {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// What the cluster offered when the driver connected.
    pub cluster: String,
}

/// The driver script, written into the run folder at start.
const DRIVER: &str = include_str!("../ray/driver.py");
/// The longest line the driver may answer (a few KiB per unit).
const MAX_DRIVER_LINE: u64 = 64 << 20;

impl RayDriver {
    /// Starts the driver (writing it to `<out>/ray-driver.py`) and waits
    /// until it has connected to the cluster.
    pub fn start(c: &ExecConfig, out: &Path) -> Result<RayDriver> {
        let script = out.join("ray-driver.py");
        std::fs::write(&script, DRIVER).map_err(|e| file_err(&script, e))?;
        let cwd = std::env::current_dir()
            .map_err(|e| PlanError::Config(format!("no working directory ({e})")))?;
        let log = out.join("ray-driver.log");
        let log_file = std::fs::File::create(&log).map_err(|e| file_err(&log, e))?;
        let address = c.ray_address.clone().unwrap_or_else(|| "auto".into());
        let mut child = Command::new(&c.ray_python)
            .arg(&script)
            .args(["--address", &address])
            .arg("--program")
            .arg(c.program()?)
            .arg("--cwd")
            .arg(&cwd)
            .args(["--cpus", &c.ray_cpus.to_string(), "--gpus", &c.ray_gpus.to_string()])
            .args(["--retries", &c.retries.to_string()])
            .args(["--in-flight", &c.workers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| {
                PlanError::Config(format!(
                    "starting the Ray driver with {} ({e}); set --ray-python to a Python with \
                     `ray` installed",
                    c.ray_python.display()
                ))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(PlanError::Config("the Ray driver's pipes are missing".into()));
        };
        let mut d = RayDriver {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            cluster: String::new(),
        };
        let ready: Ready = d.read_line(&log, "connecting to the cluster")?;
        d.cluster = format!(
            "Ray {} at {address}: {} nodes, {} CPUs, {} GPUs",
            ready.ray, ready.nodes, ready.cpus, ready.gpus
        );
        if ready.cpus < c.ray_cpus || ready.gpus < c.ray_gpus {
            return Err(PlanError::Config(format!(
                "{}: a unit asks for {} CPUs and {} GPUs, more than the cluster has \
                 (--ray-cpus, --ray-gpus)",
                d.cluster, c.ray_cpus, c.ray_gpus
            )));
        }
        Ok(d)
    }

    fn read_line<T: serde::de::DeserializeOwned>(&mut self, log: &Path, doing: &str) -> Result<T> {
        use std::io::Read;
        let mut line = String::new();
        let n = (&mut self.stdout)
            .take(MAX_DRIVER_LINE)
            .read_line(&mut line)
            .map_err(|e| PlanError::Config(format!("reading the Ray driver ({e})")))?;
        if n == 0 {
            let _ = self.child.wait();
            return Err(PlanError::Config(format!(
                "the Ray driver ended while {doing}: {}",
                tail(log, 3000)
            )));
        }
        serde_json::from_str(&line).map_err(|e| {
            PlanError::Config(format!("the Ray driver answered {line:?} while {doing} ({e})"))
        })
    }

    /// Runs `units` on the cluster; returns when every unit has a result,
    /// with each unit's seconds from its task's submission to its result.
    pub fn run(&mut self, units: &[UnitDir], out: &Path) -> Result<Vec<f64>> {
        let names: Vec<String> = units.iter().map(|u| u.0.to_string_lossy().into_owned()).collect();
        let line = serde_json::json!({ "units": names }).to_string();
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| PlanError::Config("the Ray driver is closed".into()))?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| PlanError::Config(format!("writing to the Ray driver ({e})")))?;
        let log = out.join("ray-driver.log");
        let answer: DriverAnswer = self.read_line(&log, "running units")?;
        for (u, r) in units.iter().zip(&answer.results) {
            if r.unit != u.0.to_string_lossy() {
                return Err(PlanError::Config(format!(
                    "the Ray driver answered for {} instead of {}",
                    r.unit,
                    u.0.display()
                )));
            }
            if !r.ok || !u.result().is_file() {
                return Err(unit_failed(u, u.attempt_count(), &r.error));
            }
        }
        if answer.results.len() != units.len() {
            return Err(PlanError::Config("the Ray driver answered for too few units".into()));
        }
        Ok(answer.results.iter().map(|r| r.seconds).collect())
    }
}

impl Drop for RayDriver {
    fn drop(&mut self) {
        // End of input: the driver exits and Ray cancels what is left.
        drop(self.stdin.take());
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
