//! A real single-node Slurm cluster for one test: its own munge daemon (with a fresh key),
//! `slurmctld` and `slurmd` from Debian's packages, configured in a temporary folder on free
//! ports, stopped (jobs cancelled) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
    /// Its `slurm.conf`.
    pub conf: PathBuf,
}

fn found(prog: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(prog).is_file())
}

impl Cluster {
    /// Start one, or `None` (see [`super::not_run`]) when Slurm or root is missing.
    pub fn start() -> Option<Cluster> {
        if let Some(p) = [
            "munged",
            "slurmctld",
            "slurmd",
            "sbatch",
            "squeue",
            "scancel",
        ]
        .into_iter()
        .find(|p| !found(p))
        {
            super::not_run(&format!(
                "no {p}: the Slurm test needs munge and Slurm (./setup.sh installs them)"
            ));
            return None;
        }
        if unsafe { libc::geteuid() } != 0 {
            super::not_run("the private Slurm cluster needs root (slurmd launches jobs)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ap-slurm")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let mut key = [0u8; 1024];
        getrandom::fill(&mut key).unwrap();
        std::fs::write(d.join("munge.key"), key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("munge.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let sock = d.join("munge.sock");
        let log = |n: &str| std::fs::File::create(d.join("log").join(n)).unwrap();
        let mut daemons = Vec::new();
        daemons.push(
            Command::new("munged")
                .args(["-f", "-F", "-S"])
                .arg(&sock)
                .arg(format!("--key-file={}", d.join("munge.key").display()))
                .arg(format!("--log-file={}", d.join("log/munged.log").display()))
                .arg(format!("--pid-file={}", d.join("munged.pid").display()))
                .arg(format!("--seed-file={}", d.join("munged.seed").display()))
                .stdout(Stdio::null())
                .stderr(log("munged.out"))
                .spawn()
                .unwrap(),
        );
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "munged did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let host = host.trim().split('.').next().unwrap().to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (p1, p2) = (super::board::free_port(), super::board::free_port());
        let conf = d.join("slurm.conf");
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            &conf,
            format!(
                "ClusterName=autoprune-test\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n\
                 AuthType=auth/munge\nAuthInfo=socket={sock}\nCredType=cred/munge\n\
                 StateSaveLocation={state}\nSlurmdSpoolDir={spool}\nSlurmctldPidFile={cpid}\nSlurmdPidFile={dpid}\n\
                 SlurmctldPort={p1}\nSlurmdPort={p2}\nSlurmctldLogFile={clog}\nSlurmdLogFile={dlog}\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSchedulerType=sched/builtin\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\nMpiDefault=none\n\
                 JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\n\
                 KillWait=2\nMinJobAge=600\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN\n\
                 PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
                sock = sock.display(),
                state = p("state"),
                spool = p("spool"),
                cpid = p("slurmctld.pid"),
                dpid = p("slurmd.pid"),
                clog = p("log/slurmctld.log"),
                dlog = p("log/slurmd.log"),
            ),
        )
        .unwrap();
        for (prog, out) in [("slurmctld", "slurmctld.out"), ("slurmd", "slurmd.out")] {
            daemons.push(
                Command::new(prog)
                    .arg("-D")
                    .arg("-f")
                    .arg(&conf)
                    .env("SLURM_CONF", &conf)
                    .stdout(Stdio::null())
                    .stderr(log(out))
                    .spawn()
                    .unwrap(),
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let c = Cluster { dir, daemons, conf };
        let start = Instant::now();
        loop {
            let o = c.cmd("sinfo").args(["-h", "-o", "%T"]).output().unwrap();
            if String::from_utf8_lossy(&o.stdout).trim() == "idle" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the node did not come up: {}\n{}",
                String::from_utf8_lossy(&o.stderr),
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(c)
    }

    /// A Slurm client command for this cluster.
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// The daemons' logs.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"] {
            s += &format!(
                "--- {f}\n{}",
                std::fs::read_to_string(self.dir.path().join("log").join(f)).unwrap_or_default()
            );
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .cmd("scancel")
            .args(["--user", "root", "--full"])
            .output();
        std::thread::sleep(Duration::from_secs(1));
        for d in self.daemons.iter_mut().rev() {
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let _ = d.wait();
        }
    }
}
