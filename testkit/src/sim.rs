//! A simulated ipamd: the state of one node's IP address management and the metrics page ipamd would
//! serve for it, in three generations of ipamd's format. Used by the demo, the benchmarks and the
//! end-to-end tests (served over real HTTP there); pure and deterministic for a seed.
//!
//! The simulator keeps *lifetime* counter values that survive a simulated ipamd restart; the page shows
//! them relative to the last restart, as ipamd would. Tests take the truth from the lifetime values.

use std::fmt::Write as _;

/// Which ipamd generation's page to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageStyle {
    /// CNI ≤ v1.7 (2019): summaries with quantiles, no `status` label, no prefixes.
    Legacy2019,
    /// CNI v1.16–v1.18: several counters typed as gauges (their values stayed cumulative).
    GaugeTyped,
    /// CNI v1.23 in secondary-IP mode: no quantiles, `status` labels, per-IP `/32` cidrs.
    Modern,
    /// CNI v1.23 with prefix delegation: `/28` prefixes.
    PrefixDelegation,
}

impl PageStyle {
    pub const ALL: [PageStyle; 4] = [PageStyle::Legacy2019, PageStyle::GaugeTyped, PageStyle::Modern, PageStyle::PrefixDelegation];
}

/// Lifetime counters (never reset by a simulated restart).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub add_ip_req: u64,
    pub del_ip_req_pod_deleted: u64,
    pub ipamd_err_reconcile: u64,
    pub ec2_req_describe: u64,
    pub ec2_req_assign: u64,
    pub api_err_throttle: u64,
    pub utils_err: u64,
    pub no_available_ip: u64,
    pub api_latency_sum_ms: u64,
    pub api_latency_count: u64,
}

impl Counters {
    fn minus(&self, base: &Counters) -> Counters {
        Counters {
            add_ip_req: self.add_ip_req - base.add_ip_req,
            del_ip_req_pod_deleted: self.del_ip_req_pod_deleted - base.del_ip_req_pod_deleted,
            ipamd_err_reconcile: self.ipamd_err_reconcile - base.ipamd_err_reconcile,
            ec2_req_describe: self.ec2_req_describe - base.ec2_req_describe,
            ec2_req_assign: self.ec2_req_assign - base.ec2_req_assign,
            api_err_throttle: self.api_err_throttle - base.api_err_throttle,
            utils_err: self.utils_err - base.utils_err,
            no_available_ip: self.no_available_ip - base.no_available_ip,
            api_latency_sum_ms: self.api_latency_sum_ms - base.api_latency_sum_ms,
            api_latency_count: self.api_latency_count - base.api_latency_count,
        }
    }
}

/// One simulated node's ipamd.
#[derive(Clone, Debug)]
pub struct SimIpamd {
    pub style: PageStyle,
    rng: fastrand::Rng,
    /// Unix seconds of the current ipamd process start.
    pub start_time: f64,
    pub eni_max: u64,
    pub ips_per_eni: u64,
    pub enis: u64,
    pub assigned: u64,
    pub prefixes: u64,
    pub lifetime: Counters,
    at_restart: Counters,
    p99_ms: f64,
    /// The subnet of its ENIs; by default one derived from its shape.
    pub subnet: Option<String>,
    /// Network cards the ENIs are spread over (1: a single datastore, as before VPC CNI v1.20).
    pub network_cards: u64,
    /// Prefix delegation: the /28s its introspection lists, in order (by default `10.<eni>.<k>.0/28`).
    pub prefix_cidrs: Vec<String>,
    /// An IPv6 node (`ENABLE_IPv6`): one ENI whose introspection lists one /80 prefix holding the pods
    /// (no IPv4 cidrs), counted by ipamd as 2^48 addresses in `awscni_total_ip_addresses`; `awscni_ip_max`
    /// keeps the IPv4 limits, as ipamd does.
    pub ipv6: bool,
    /// Free addresses freed by the last step's departures, shown on the introspection page as unassigned
    /// a second before it is rendered: in ipamd's IP cooldown for any reader with a period over 1 s.
    pub cooling: u64,
}

/// What ipamd counts for one IPv6 /80 prefix.
pub const IPV6_PREFIX_ADDRESSES: u64 = 1 << 48;

impl SimIpamd {
    pub fn new(style: PageStyle, seed: u64, start_time: f64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let eni_max = [3, 4, 8, 15][rng.usize(..4)];
        let ips_per_eni = [10, 15, 30][rng.usize(..3)];
        let mut sim = Self {
            style,
            rng,
            start_time,
            eni_max,
            ips_per_eni,
            enis: 1,
            assigned: 0,
            prefixes: 0,
            lifetime: Counters::default(),
            at_restart: Counters::default(),
            p99_ms: 120.0,
            subnet: None,
            prefix_cidrs: Vec::new(),
            network_cards: 1,
            ipv6: false,
            cooling: 0,
        };
        sim.assigned = sim.rng.u64(0..=ips_per_eni);
        sim.fit_capacity();
        sim
    }

    /// IPs the node holds (warm + assigned).
    pub fn total_ips(&self) -> u64 {
        if self.ipv6 {
            return IPV6_PREFIX_ADDRESSES;
        }
        match self.style {
            PageStyle::PrefixDelegation => self.prefixes * 16,
            _ => self.enis * (self.ips_per_eni - 1),
        }
    }

    pub fn ip_max(&self) -> u64 {
        match self.style {
            PageStyle::PrefixDelegation => self.eni_max * (self.ips_per_eni - 1) * 16,
            _ => self.eni_max * (self.ips_per_eni - 1),
        }
    }

    /// Make ENIs and prefixes hold the assigned IPs (after changing `assigned` by hand).
    pub fn fit_capacity(&mut self) {
        self.assigned = self.assigned.min(self.ip_max());
        if self.ipv6 {
            self.enis = 1;
            return;
        }
        match self.style {
            PageStyle::PrefixDelegation => {
                self.prefixes = self.assigned.div_ceil(16) + 1;
                self.enis = self.prefixes.div_ceil(self.ips_per_eni - 1).max(1);
            }
            _ => {
                self.enis = (self.assigned.div_ceil(self.ips_per_eni - 1) + 1).clamp(1, self.eni_max);
            }
        }
    }

    /// Advance by one interval: pods come and go, ipamd calls EC2, errors happen now and then.
    pub fn step(&mut self) {
        let adds = self.rng.u64(0..6);
        let dels = self.rng.u64(0..=adds.min(self.assigned + adds));
        let room = self.ip_max().saturating_sub(self.assigned);
        let granted = adds.min(room);
        self.lifetime.add_ip_req += adds;
        self.lifetime.no_available_ip += adds - granted;
        self.assigned = self.assigned + granted - dels.min(self.assigned + granted);
        self.lifetime.del_ip_req_pod_deleted += dels;
        let calls = self.rng.u64(1..4);
        self.lifetime.ec2_req_describe += calls;
        self.lifetime.ec2_req_assign += self.rng.u64(0..2);
        self.lifetime.api_latency_count += calls;
        self.lifetime.api_latency_sum_ms += calls * self.rng.u64(40..200);
        if self.rng.u8(..10) == 0 {
            self.lifetime.api_err_throttle += 1;
            self.lifetime.ipamd_err_reconcile += 1;
        }
        if self.rng.u8(..20) == 0 {
            self.lifetime.utils_err += 1;
        }
        self.p99_ms = 80.0 + self.rng.f64() * 200.0;
        self.fit_capacity();
        self.cooling = dels;
    }

    /// Simulate an ipamd restart at `now`: counters on the page start again from zero.
    pub fn restart(&mut self, now: f64) {
        self.start_time = now;
        self.at_restart = self.lifetime.clone();
    }

    /// The counters as ipamd's current process shows them.
    pub fn visible(&self) -> Counters {
        self.lifetime.minus(&self.at_restart)
    }

    /// The subnet of the node's ENIs (one subnet per simulated node): `subnet` when set.
    pub fn subnet_id(&self) -> String {
        self.subnet.clone().unwrap_or_else(|| format!("subnet-0{:016x}", self.eni_max * 1_000 + self.ips_per_eni))
    }

    /// Free addresses its introspection page shows in their cooldown (`cooling`, as far as free slots go).
    pub fn cooling_ips(&self) -> u64 {
        self.eni_layout().iter().map(|e| e.3).sum()
    }

    /// The node's ENIs: each one's introspection JSON, pod addresses, assigned and cooling addresses.
    fn eni_layout(&self) -> Vec<(String, u64, u64, u64)> {
        if self.ipv6 {
            let (json, total, assigned) = self.ipv6_eni();
            return vec![(json, total, assigned, 0)];
        }
        let freed_at = cni_metrics_proto::clock::rfc3339(cni_metrics_proto::clock::unix_ms_now() - 1000);
        let mut cooling_left = self.cooling;
        let mut out = Vec::new();
        let mut left = self.assigned;
        let pd = self.style == PageStyle::PrefixDelegation;
        let mut prefix = 0;
        for e in 0..self.enis {
            let mut cidrs = Vec::new();
            let (mut total, mut assigned, mut cooling) = (0, 0, 0);
            let slots = if pd { self.prefixes.div_ceil(self.enis).max(1) } else { self.ips_per_eni - 1 };
            for k in 0..slots {
                if pd && prefix >= self.prefixes {
                    break;
                }
                let cap = if pd { 16 } else { 1 };
                let used = left.min(cap);
                left -= used;
                total += cap;
                assigned += used;
                let cool = cooling_left.min(cap - used);
                cooling_left -= cool;
                cooling += cool;
                let mut addrs: Vec<String> = (0..used)
                    .map(|i| format!("\"10.{e}.{k}.{i}\": {{\"Address\": \"10.{e}.{k}.{i}\", \"IPAMKey\": {{\"networkName\": \"aws-cni\", \"containerID\": \"\", \"ifName\": \"\"}}}}"))
                    .collect();
                addrs.extend((used..used + cool).map(|i| {
                    format!(
                        "\"10.{e}.{k}.{i}\": {{\"Address\": \"10.{e}.{k}.{i}\", \"IPAMKey\": {{\"networkName\": \"\", \"containerID\": \"\", \"ifName\": \"\"}}, \"UnassignedTime\": \"{freed_at}\"}}"
                    )
                }));
                let cidr = if pd {
                    self.prefix_cidrs.get(prefix as usize).cloned().unwrap_or_else(|| format!("10.{e}.{k}.0/28"))
                } else {
                    format!("10.{e}.0.{k}/32")
                };
                cidrs.push(format!("\"{cidr}\": {{\"IsPrefix\": {pd}, \"IPAddresses\": {{{}}}}}", addrs.join(", ")));
                prefix += 1;
            }
            let json = format!(
                "\"eni-0a1b2c3d4e5f{e:05}\": {{\"ID\": \"eni-0a1b2c3d4e5f{e:05}\", \"SubnetID\": \"{}\", \"AvailableIPv4Cidrs\": {{{}}}}}",
                self.subnet_id(),
                cidrs.join(", ")
            );
            out.push((json, total, assigned, cooling));
        }
        out
    }

    /// An IPv6 node's one ENI: a /80 prefix with the pods' addresses.
    fn ipv6_eni(&self) -> (String, u64, u64) {
        let addrs: Vec<String> = (0..self.assigned)
            .map(|i| format!("\"2600:1f18:4a:2b00:{i:x}::\": {{\"Address\": \"2600:1f18:4a:2b00:{i:x}::\", \"IPAMKey\": {{\"networkName\": \"aws-cni\", \"containerID\": \"\", \"ifName\": \"\"}}}}"))
            .collect();
        let json = format!(
            "\"eni-0a1b2c3d4e5f00000\": {{\"ID\": \"eni-0a1b2c3d4e5f00000\", \"SubnetID\": \"{}\", \"AvailableIPv4Cidrs\": {{}}, \
             \"AvailableIPv6Cidrs\": {{\"2600:1f18:4a:2b00::/80\": {{\"IsPrefix\": true, \"IPAddresses\": {{{}}}}}}}}}",
            self.subnet_id(),
            addrs.join(", ")
        );
        (json, IPV6_PREFIX_ADDRESSES, self.assigned)
    }

    /// Per network card (ENI `e` on card `e % network_cards`): pod addresses, assigned, ENIs.
    pub fn card_totals(&self) -> Vec<(u64, u64, u64)> {
        let cards = self.network_cards.max(1);
        let mut out = vec![(0, 0, 0); cards as usize];
        for (e, (_, total, assigned, _)) in self.eni_layout().into_iter().enumerate() {
            if let Some(c) = out.get_mut(e % cards as usize) {
                c.0 += total;
                c.1 += assigned;
                c.2 += 1;
            }
        }
        out
    }

    /// Render ipamd's introspection page (`/v1/enis`, keyed by network card as in current ipamd).
    pub fn render_enis(&self) -> String {
        let cards = self.network_cards.max(1) as usize;
        let mut per_card: Vec<Vec<String>> = vec![Vec::new(); cards];
        for (e, (json, _, _, _)) in self.eni_layout().into_iter().enumerate() {
            per_card[e % cards].push(json);
        }
        let totals = self.card_totals();
        let body: Vec<String> = per_card
            .iter()
            .zip(&totals)
            .enumerate()
            .map(|(i, (enis, (total, assigned, _)))| {
                format!("\"{i}\": {{\"TotalIPs\": {total}, \"AssignedIPs\": {assigned}, \"ENIs\": {{{}}}}}", enis.join(", "))
            })
            .collect();
        format!("{{{}}}", body.join(", "))
    }

    /// What the page's global gauges show (total, assigned, ENIs): since VPC CNI v1.20 each network card's
    /// datastore sets them, so with several cards the page shows the last card's values.
    pub fn page_totals(&self) -> (u64, u64, u64) {
        if self.network_cards > 1 {
            self.card_totals().last().copied().unwrap_or_default()
        } else {
            (self.total_ips(), self.assigned, self.enis)
        }
    }

    /// Render the page ipamd would serve.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(14_000);
        let style = self.style;
        let legacy = style == PageStyle::Legacy2019;
        let modern = matches!(style, PageStyle::Modern | PageStyle::PrefixDelegation);
        let flipped = if style == PageStyle::GaugeTyped { "gauge" } else { "counter" };
        let c = self.visible();
        let w = &mut out;

        family(w, "awscni_add_ip_req_count", "The number of add IP address requests", flipped);
        line(w, "awscni_add_ip_req_count", "", c.add_ip_req as f64);
        family(w, "awscni_assigned_ip_addresses", "The number of IP addresses assigned to pods", "gauge");
        let (page_total, page_assigned, page_enis) = self.page_totals();
        line(w, "awscni_assigned_ip_addresses", "", page_assigned as f64);
        if !legacy {
            family(w, "awscni_assigned_ip_per_cidr", "The total number of IP addresses assigned per cidr", "gauge");
            if style == PageStyle::PrefixDelegation {
                let mut left = self.assigned;
                for p in 0..self.prefixes {
                    let n = left.min(16);
                    left -= n;
                    line(w, "awscni_assigned_ip_per_cidr", &format!("cidr=\"10.1.{p}.16/28\""), n as f64);
                }
            } else {
                for i in 0..self.assigned {
                    line(w, "awscni_assigned_ip_per_cidr", &format!("cidr=\"10.0.{}.{}/32\"", i / 250, i % 250 + 2), 1.0);
                }
            }
        }
        if modern {
            family(w, "awscni_assigned_ip_per_eni", "The number of allocated ips partitioned by eni", "gauge");
            let mut left = self.assigned;
            for e in 0..self.enis {
                let cap = (self.total_ips() / self.enis.max(1)).max(1);
                let n = left.min(cap);
                left -= n;
                line(w, "awscni_assigned_ip_per_eni", &format!("eni=\"eni-0a1b2c3d4e5f{e:05}\""), n as f64);
            }
        }
        family(w, "awscni_aws_api_error_count", "The number of times AWS API returns an error", flipped);
        if c.api_err_throttle > 0 {
            line(
                w,
                "awscni_aws_api_error_count",
                "api=\"AssignPrivateIpAddresses\",error=\"RequestLimitExceeded\"",
                c.api_err_throttle as f64,
            );
        }
        family(w, "awscni_aws_api_latency_ms", "AWS API call latency in ms", "summary");
        let apis = [("DescribeInstances", 3u64), ("AssignPrivateIpAddresses", 1), ("GetMetadata", 5)];
        for (api, share) in apis {
            let count = c.api_latency_count * share / 9;
            let sum = c.api_latency_sum_ms * share / 9;
            let labels =
                if legacy { format!("api=\"{api}\",error=\"false\"") } else { format!("api=\"{api}\",error=\"false\",status=\"200\"") };
            if legacy {
                for (q, f) in [("0.5", 0.4), ("0.9", 0.8), ("0.99", 1.0)] {
                    line(w, "awscni_aws_api_latency_ms", &format!("{labels},quantile=\"{q}\""), (self.p99_ms * f).round());
                }
            }
            line(w, "awscni_aws_api_latency_ms_sum", &labels, sum as f64);
            line(w, "awscni_aws_api_latency_ms_count", &labels, count as f64);
        }
        family(w, "awscni_aws_utils_error_count", "The number of errors not handled in awsutils library", "counter");
        if c.utils_err > 0 {
            line(
                w,
                "awscni_aws_utils_error_count",
                "error=\"operation error EC2: DeleteNetworkInterface, https response error StatusCode: 400, api error InvalidParameterValue: Network interface 'eni-0123' is currently in use. {code=\\\"x\\\"}\",fn=\"FreeENIDeleteErr\"",
                c.utils_err as f64,
            );
        }
        if !legacy {
            family(
                w,
                "awscni_build_info",
                "A metric with a constant '1' value labeled by version, revision, and goversion from which amazon-vpc-cni-k8s was built.",
                "gauge",
            );
            line(w, "awscni_build_info", "goversion=\"go1.24.6\",version=\"v1.23.1\"", 1.0);
        }
        family(w, "awscni_del_ip_req_count", "The number of delete IP address requests", "counter");
        if c.del_ip_req_pod_deleted > 0 {
            line(w, "awscni_del_ip_req_count", "reason=\"PodDeleted\"", c.del_ip_req_pod_deleted as f64);
        }
        if !legacy {
            family(w, "awscni_ec2api_req_count", "The number of requests made to EC2 APIs by CNI", "counter");
            line(w, "awscni_ec2api_req_count", "fn=\"DescribeNetworkInterfaces\"", c.ec2_req_describe as f64);
            line(w, "awscni_ec2api_req_count", "fn=\"AssignPrivateIpAddresses\"", c.ec2_req_assign as f64);
        }
        family(w, "awscni_eni_allocated", "The number of ENIs allocated", "gauge");
        line(w, "awscni_eni_allocated", "", page_enis as f64);
        family(
            w,
            "awscni_eni_max",
            "The maximum number of ENIs that can be attached to the instance, accounting for unmanaged ENIs",
            "gauge",
        );
        line(w, "awscni_eni_max", "", self.eni_max as f64);
        family(w, "awscni_force_removed_enis", "The number of ENIs force removed while they had assigned pods", flipped);
        line(w, "awscni_force_removed_enis", "", 0.0);
        family(w, "awscni_force_removed_ips", "The number of IPs force removed while they had assigned pods", flipped);
        line(w, "awscni_force_removed_ips", "", 0.0);
        family(w, "awscni_ip_max", "The maximum number of IP addresses that can be allocated to the instance", "gauge");
        line(w, "awscni_ip_max", "", self.ip_max() as f64);
        family(w, "awscni_ipamd_action_inprogress", "The number of ipamd actions in progress", "gauge");
        let fns: &[&str] = if legacy { &["increaseIPPool", "decreaseIPPool"] } else { &["nodeIPPoolReconcile", "increaseDatastorePool"] };
        for f in fns {
            line(w, "awscni_ipamd_action_inprogress", &format!("fn=\"{f}\""), 0.0);
        }
        family(w, "awscni_ipamd_error_count", "The number of errors encountered in ipamd", "counter");
        if c.ipamd_err_reconcile > 0 {
            line(w, "awscni_ipamd_error_count", "fn=\"eniReconcileAdd\"", c.ipamd_err_reconcile as f64);
        }
        if !legacy {
            family(
                w,
                "awscni_no_available_ip_addresses",
                "The number of pod IP assignments that fail due to no available IP addresses",
                flipped,
            );
            line(w, "awscni_no_available_ip_addresses", "", c.no_available_ip as f64);
            family(w, "awscni_total_ipv4_prefixes", "The total number of IPv4 prefixes", "gauge");
            line(w, "awscni_total_ipv4_prefixes", "", self.prefixes as f64);
        }
        family(w, "awscni_total_ip_addresses", "The total number of IP addresses", "gauge");
        line(w, "awscni_total_ip_addresses", "", page_total as f64);
        if modern {
            family(
                w,
                "awscni_ipamd_startup_duration_seconds",
                "The duration of IPAMD startup from process start to ready to serve CNI requests",
                "histogram",
            );
            let labels = "failure_reason=\"\",success=\"true\",with_api_server=\"true\"";
            for le in ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"] {
                let v = if le.parse::<f64>().map(|x| x >= 2.5).unwrap_or(true) { 1.0 } else { 0.0 };
                line(w, "awscni_ipamd_startup_duration_seconds_bucket", &format!("{labels},le=\"{le}\""), v);
            }
            line(w, "awscni_ipamd_startup_duration_seconds_sum", labels, 1.84);
            line(w, "awscni_ipamd_startup_duration_seconds_count", labels, 1.0);
        }
        go_runtime(w, self.start_time, self.assigned);
        out
    }
}

fn family(w: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn line(w: &mut String, name: &str, labels: &str, v: f64) {
    if labels.is_empty() {
        let _ = writeln!(w, "{name} {v}");
    } else {
        let _ = writeln!(w, "{name}{{{labels}}} {v}");
    }
}

/// The Go and process collector families every ipamd page carries (the agent ignores them).
fn go_runtime(w: &mut String, start: f64, jitter: u64) {
    family(
        w,
        "go_gc_duration_seconds",
        "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.",
        "summary",
    );
    for q in ["0", "0.25", "0.5", "0.75", "1"] {
        line(w, "go_gc_duration_seconds", &format!("quantile=\"{q}\""), 4.1e-05);
    }
    line(w, "go_gc_duration_seconds_sum", "", 0.0231);
    line(w, "go_gc_duration_seconds_count", "", 212.0);
    family(w, "go_goroutines", "Number of goroutines that currently exist.", "gauge");
    line(w, "go_goroutines", "", 52.0);
    family(w, "go_info", "Information about the Go environment.", "gauge");
    line(w, "go_info", "version=\"go1.24.6\"", 1.0);
    for (name, help, v) in [
        ("go_memstats_alloc_bytes", "Number of bytes allocated in heap and currently in use. Equals to /memory/classes/heap/objects:bytes.", 9.1e6),
        ("go_memstats_buck_hash_sys_bytes", "Number of bytes used by the profiling bucket hash table. Equals to /memory/classes/profiling/buckets:bytes.", 1.5e6),
        ("go_memstats_frees_total", "Total number of heap objects frees. Equals to /gc/heap/frees:objects + /gc/heap/tiny/allocs:objects.", 4.2e6),
        ("go_memstats_gc_sys_bytes", "Number of bytes used for garbage collection system metadata. Equals to /memory/classes/metadata/other:bytes.", 4.0e6),
        ("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and currently in use, same as go_memstats_alloc_bytes. Equals to /memory/classes/heap/objects:bytes.", 9.1e6),
        ("go_memstats_heap_idle_bytes", "Number of heap bytes waiting to be used. Equals to /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", 6.3e6),
        ("go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes", 1.1e7),
        ("go_memstats_heap_objects", "Number of currently allocated objects. Equals to /gc/heap/objects:objects.", 61234.0),
        ("go_memstats_heap_released_bytes", "Number of heap bytes released to OS. Equals to /memory/classes/heap/released:bytes.", 4.1e6),
        ("go_memstats_heap_sys_bytes", "Number of heap bytes obtained from system. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes + /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", 1.7e7),
        ("go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of last garbage collection.", start + 3600.0),
        ("go_memstats_mallocs_total", "Total number of heap objects allocated, both live and gc-ed. Semantically a counter version for go_memstats_heap_objects gauge. Equals to /gc/heap/allocs:objects + /gc/heap/tiny/allocs:objects.", 4.3e6),
        ("go_memstats_mcache_inuse_bytes", "Number of bytes in use by mcache structures. Equals to /memory/classes/metadata/mcache/inuse:bytes.", 2400.0),
        ("go_memstats_mspan_inuse_bytes", "Number of bytes in use by mspan structures. Equals to /memory/classes/metadata/mspan/inuse:bytes.", 190_000.0),
        ("go_memstats_next_gc_bytes", "Number of heap bytes when next garbage collection will take place. Equals to /gc/heap/goal:bytes.", 1.5e7),
        ("go_memstats_stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in non-CGO environments. Equals to /memory/classes/heap/stacks:bytes.", 1.2e6),
        ("go_memstats_sys_bytes", "Number of bytes obtained from system. Equals to /memory/classes/total:byte.", 2.9e7),
        ("go_threads", "Number of OS threads created.", 11.0),
        ("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", 812.3 + jitter as f64),
        ("process_max_fds", "Maximum number of open file descriptors.", 1_048_576.0),
        ("process_open_fds", "Number of open file descriptors.", 17.0),
        ("process_resident_memory_bytes", "Resident memory size in bytes.", 5.4e7),
        ("process_virtual_memory_bytes", "Virtual memory size in bytes.", 1.3e9),
    ] {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        family(w, name, help, kind);
        line(w, name, "", v);
    }
    family(w, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "gauge");
    let _ = writeln!(w, "process_start_time_seconds {start:.2}");
    family(w, "promhttp_metric_handler_requests_in_flight", "Current number of scrapes being served.", "gauge");
    line(w, "promhttp_metric_handler_requests_in_flight", "", 1.0);
    family(w, "promhttp_metric_handler_requests_total", "Total number of scrapes by HTTP status code.", "counter");
    for (code, v) in [("200", 5012.0), ("500", 0.0), ("503", 0.0)] {
        line(w, "promhttp_metric_handler_requests_total", &format!("code=\"{code}\""), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_resets_visible_counters_but_not_lifetime() {
        let mut sim = SimIpamd::new(PageStyle::Modern, 1, 1_700_000_000.0);
        for _ in 0..10 {
            sim.step();
        }
        let before = sim.lifetime.add_ip_req;
        sim.restart(1_700_000_500.0);
        assert_eq!(sim.visible().add_ip_req, 0);
        sim.step();
        assert!(sim.lifetime.add_ip_req >= before);
        assert_eq!(sim.visible().add_ip_req, sim.lifetime.add_ip_req - before);
    }
}
