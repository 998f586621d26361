//! One rollout clock for the fleet: which replica advances rollout steps
//! and adds their hold time.
//!
//! Every replica campaigns for one key, `<prefix>/leader`, created in a
//! transaction only when absent and bound to a lease of `fleet.leader_ttl`.
//! The replica whose transaction created it leads, and keeps its lease alive
//! (a renewal every third of the TTL); the others watch the key and campaign
//! again when it goes: at once when the leader resigns (a clean shutdown
//! revokes its lease), within the TTL when it dies. One key rather than
//! etcd's election API: every replica (and an operator with `etcdctl get`)
//! reads who leads from the same key it watches, and a leaderless fleet is
//! simply a missing key.
//!
//! A replica acts as the leader only while its last renewal is younger than
//! the TTL, measured from when it asked: a leader cut off from etcd (or
//! stopped, `SIGSTOP`) stops advancing by itself before its lease can expire
//! and another replica take over. Without etcd nobody leads and rollouts
//! stand still (the hold kept so far is kept); trips, a latch and operators'
//! commands work on every replica as before. Without a fleet, the single
//! process is its own leader ([`Leadership::solo`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

/// Who advances the rollouts. Cheap to clone; read without waiting.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    /// This replica's name in the fleet.
    replica: String,
    /// `false`: one process, its own leader.
    fleet: bool,
    /// Until when (`clock::now_ms`) this replica may act as the leader;
    /// 0: it does not lead.
    until_ms: AtomicU64,
    /// The fleet's leader as last seen; `None`: none, or unknown (etcd away).
    leader: ArcSwapOption<Seen>,
    /// The lead this replica holds now, for fencing its writes; `None`
    /// while it does not lead.
    term: ArcSwapOption<Term>,
    /// Set by [`Leadership::resign`]: the campaign ends and gives the lease back.
    #[cfg(feature = "fleet")]
    resign: tokio::sync::watch::Sender<bool>,
    #[cfg(feature = "fleet")]
    resigned: tokio::sync::Notify,
    /// Told by [`Leadership::deposed`]: the campaign's lead ends now.
    #[cfg(feature = "fleet")]
    deposed: tokio::sync::Notify,
}

/// One lead of this replica: the leader key and the lease it was created
/// under. A write the leader makes as the leader is fenced by it: etcd
/// applies it only while the key is still bound to this lease, so a
/// replica that lost the lead (its lease revoked or expired, the key taken
/// over) cannot move a rollout however late its write arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub key: String,
    pub lease: i64,
}

/// The leader as this replica last saw it.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    name: String,
    /// This replica itself (not another process under the same name).
    this_replica: bool,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("replica", &self.inner.replica)
            .field("fleet", &self.inner.fleet)
            .field("leading", &self.is_leader())
            .finish()
    }
}

impl Leadership {
    /// A single process: it always leads, and says nothing about it.
    pub fn solo() -> Leadership {
        Leadership::new(String::new(), false)
    }

    fn new(replica: String, fleet: bool) -> Leadership {
        Leadership {
            inner: Arc::new(Inner {
                replica,
                fleet,
                until_ms: AtomicU64::new(0),
                leader: ArcSwapOption::empty(),
                term: ArcSwapOption::empty(),
                #[cfg(feature = "fleet")]
                resign: tokio::sync::watch::channel(false).0,
                #[cfg(feature = "fleet")]
                resigned: tokio::sync::Notify::new(),
                #[cfg(feature = "fleet")]
                deposed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// A replica holding `term`, taken outside the campaign, for `valid`
    /// from now: a leader that has not yet learnt it lost the lead, as the
    /// fencing tests need one (no campaign watches the key for it).
    #[doc(hidden)]
    pub fn holding(replica: &str, term: Term, valid: std::time::Duration) -> Leadership {
        let leadership = Leadership::new(replica.to_string(), true);
        leadership.inner.term.store(Some(Arc::new(term)));
        let until = crate::clock::now_ms()
            .saturating_add(u64::try_from(valid.as_millis()).unwrap_or(u64::MAX));
        leadership.inner.until_ms.store(until, Ordering::Release);
        leadership
    }

    /// Whether this replica may advance rollouts now.
    pub fn is_leader(&self) -> bool {
        !self.inner.fleet || crate::clock::now_ms() < self.inner.until_ms.load(Ordering::Acquire)
    }

    /// The lead this replica holds now; `None` while it does not lead, and
    /// always for a single process (it needs no fence).
    pub fn term(&self) -> Option<Arc<Term>> {
        if !self.is_leader() {
            return None;
        }
        self.inner.term.load_full()
    }

    /// A write fenced by `term` was refused: etcd no longer binds the
    /// leader key to its lease, so this replica stops leading at once
    /// (rather than at its next renewal) and campaigns again.
    pub fn deposed(&self, term: &Term) {
        let current = self.inner.term.load();
        if current.as_deref() != Some(term) {
            return;
        }
        self.inner.until_ms.store(0, Ordering::Release);
        self.inner.term.store(None);
        tracing::warn!(
            replica = self.inner.replica.as_str(),
            "rollout leader: etcd refused this replica's rollout write because the leader key \
             is no longer bound to its lease (it lost the lead); it stops leading, and the \
             fleet's rollout stands"
        );
        #[cfg(feature = "fleet")]
        self.inner.deposed.notify_waiters();
    }

    /// Part of a fleet (else: a single process, its own leader).
    pub fn in_fleet(&self) -> bool {
        self.inner.fleet
    }

    /// This replica's name in the fleet (empty for a single process).
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The fleet's leader as last seen; `None` while nobody leads or etcd
    /// is away.
    pub fn leader(&self) -> Option<String> {
        self.inner
            .leader
            .load()
            .as_ref()
            .map(|seen| seen.name.clone())
    }

    /// Gives the lead back (a clean shutdown), so a sibling leads at once
    /// rather than after the TTL. Waits at most `limit`.
    pub async fn resign(&self, limit: std::time::Duration) {
        #[cfg(feature = "fleet")]
        if self.inner.fleet {
            let resigned = self.inner.resigned.notified();
            self.inner.resign.send_replace(true);
            let _ = tokio::time::timeout(limit, resigned).await;
        }
        #[cfg(not(feature = "fleet"))]
        let _ = limit;
    }

    /// Leads until `until_ms`.
    #[cfg(feature = "fleet")]
    fn lead_until(&self, until_ms: u64) {
        self.inner.until_ms.store(until_ms, Ordering::Release);
    }

    /// Records that another replica leads now (`None`: nobody, or
    /// unknown), and logs it when it changed. This replica does not lead.
    #[cfg(feature = "fleet")]
    fn seen(&self, leader: Option<&str>) {
        self.inner.until_ms.store(0, Ordering::Release);
        self.record(leader.map(|name| Seen {
            name: name.to_string(),
            this_replica: false,
        }));
    }

    /// Records that this replica leads now.
    #[cfg(feature = "fleet")]
    fn seen_self(&self) {
        self.record(Some(Seen {
            name: self.inner.replica.clone(),
            this_replica: true,
        }));
    }

    #[cfg(feature = "fleet")]
    fn record(&self, now: Option<Seen>) {
        if self.inner.leader.load().as_deref() == now.as_ref() {
            return;
        }
        match &now {
            Some(seen) if seen.this_replica => tracing::info!(
                replica = seen.name.as_str(),
                "rollout leader: this replica leads the fleet's rollout clock (it advances steps \
                 and counts their hold)"
            ),
            Some(seen) => tracing::info!(
                leader = seen.name.as_str(),
                replica = self.inner.replica.as_str(),
                "rollout leader: another replica leads; this one follows (it trips on its own \
                 figures, but advances no rollout step)"
            ),
            None => tracing::info!(
                replica = self.inner.replica.as_str(),
                "rollout leader: none now; rollouts hold where they are until a replica leads"
            ),
        }
        self.inner.leader.store(now.map(Arc::new));
    }
}

/// This replica's name: `fleet.replica`, else the host name (a pod's name on
/// Kubernetes), else `veer-<pid>`.
pub fn replica_name(configured: Option<&str>) -> String {
    // The same name the fleet's windows are published under.
    configured.map_or_else(crate::fleet::windows::default_replica, str::to_string)
}

#[cfg(feature = "fleet")]
pub use campaign::start;

#[cfg(feature = "fleet")]
mod campaign {
    use std::time::Duration;

    use etcd_client::{
        Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
    };
    use tokio::time::Instant;

    use super::Leadership;
    use crate::fleet::etcd::{connect, EtcdSettings};

    /// Back-off between campaigns while etcd is away.
    const RETRY_MIN: Duration = Duration::from_millis(200);
    const RETRY_MAX: Duration = Duration::from_secs(2);

    /// Starts campaigning for the lead as `replica`, with a lease of `ttl`
    /// (whole seconds, validated by `veer check`).
    pub fn start(settings: EtcdSettings, replica: String, ttl: Duration) -> Leadership {
        let leadership = Leadership::new(replica, true);
        let campaign = Campaign {
            key: format!("{}/leader", settings.prefix),
            ttl,
            settings,
            leadership: leadership.clone(),
        };
        tokio::spawn(campaign.run());
        leadership
    }

    struct Campaign {
        settings: EtcdSettings,
        key: String,
        ttl: Duration,
        leadership: Leadership,
    }

    /// How a turn of the campaign ended.
    enum Ended {
        /// The lead was lost or the leader's key went: campaign again now.
        Again,
        /// Asked to resign: the lease is given back, nothing more to do.
        Resigned,
    }

    impl Campaign {
        async fn run(self) {
            let mut resign = self.leadership.inner.resign.subscribe();
            let mut backoff = RETRY_MIN;
            let mut lost_logged = false;
            loop {
                if *resign.borrow() {
                    break;
                }
                // A turn watches `resign` itself: a leader gives its lease back.
                match self.turn().await {
                    Ok(Ended::Again) => backoff = RETRY_MIN,
                    Ok(Ended::Resigned) => break,
                    Err(e) => {
                        self.leadership.seen(None);
                        if !lost_logged {
                            tracing::warn!(
                                error = %e,
                                "rollout leader: etcd cannot be reached, so this replica \
                                 neither leads nor knows who does; rollouts hold where they \
                                 are until it reaches etcd again"
                            );
                            lost_logged = true;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = resign.changed() => {}
                        }
                        backoff = (backoff * 2).min(RETRY_MAX);
                        continue;
                    }
                }
                lost_logged = false;
            }
            self.leadership.seen(None);
            self.leadership.inner.resigned.notify_waiters();
        }

        fn ttl_secs(&self) -> i64 {
            i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX).max(1)
        }

        /// One campaign: connect, try to create the key; lead, or follow
        /// until the key goes.
        async fn turn(&self) -> Result<Ended, etcd_client::Error> {
            let mut client = connect(&self.settings).await?;
            loop {
                let asked = Instant::now();
                let lease = client.lease_grant(self.ttl_secs(), None).await?;
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        self.key.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then([TxnOp::put(
                        self.key.clone(),
                        self.leadership.replica(),
                        Some(PutOptions::new().with_lease(lease.id())),
                    )])
                    .or_else([TxnOp::get(self.key.clone(), None)]);
                let response = client.txn(txn).await?;
                let revision = response.header().map_or(0, |h| h.revision());
                if response.succeeded() {
                    let granted = Duration::from_secs(u64::try_from(lease.ttl()).unwrap_or(1));
                    return self
                        .lead(&mut client, lease.id(), asked, granted, revision)
                        .await;
                }
                // Someone leads: the lease is not needed.
                let _ = client.lease_revoke(lease.id()).await;
                let holder = response.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(get) => get
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                    _ => None,
                });
                let Some(holder) = holder else {
                    // The compare and the read see one revision, so the key
                    // is there; should etcd say otherwise, campaign again.
                    continue;
                };
                if holder == self.leadership.replica() {
                    tracing::warn!(
                        replica = holder.as_str(),
                        "rollout leader: the leader key holds this replica's own name under \
                         another lease: a previous run of this replica (its lease expires within \
                         fleet.leader_ttl), or another replica with the same name (give each \
                         replica its own fleet.replica)"
                    );
                }
                self.leadership.seen(Some(&holder));
                if self.follow(&mut client, revision).await? {
                    return Ok(Ended::Resigned);
                }
            }
        }

        /// Watches the leader's key from after `revision` until it goes;
        /// `true` when asked to resign meanwhile.
        async fn follow(
            &self,
            client: &mut Client,
            revision: i64,
        ) -> Result<bool, etcd_client::Error> {
            let mut resign = self.leadership.inner.resign.subscribe();
            let mut watch = client
                .watch(
                    self.key.clone(),
                    Some(WatchOptions::new().with_start_revision(revision + 1)),
                )
                .await?;
            loop {
                let message = tokio::select! {
                    message = watch.message() => message?,
                    _ = resign.changed() => return Ok(true),
                };
                let Some(response) = message else {
                    return Ok(false);
                };
                if response.canceled() || response.compact_revision() > 0 {
                    return Ok(false);
                }
                for event in response.events() {
                    match (event.event_type(), event.kv()) {
                        (EventType::Delete, _) => {
                            self.leadership.seen(None);
                            return Ok(false);
                        }
                        (EventType::Put, Some(kv)) => {
                            self.leadership
                                .seen(Some(&String::from_utf8_lossy(kv.value())));
                        }
                        (EventType::Put, None) => {}
                    }
                }
            }
        }

        /// Leads: renews the lease every third of its TTL, and stops
        /// leading when a renewal is late, the lease is gone, or the key
        /// changed hands.
        async fn lead(
            &self,
            client: &mut Client,
            lease: i64,
            asked: Instant,
            granted: Duration,
            revision: i64,
        ) -> Result<Ended, etcd_client::Error> {
            let mut resign = self.leadership.inner.resign.subscribe();
            let mut valid_until = asked + granted;
            self.leadership
                .inner
                .term
                .store(Some(std::sync::Arc::new(super::Term {
                    key: self.key.clone(),
                    lease,
                })));
            self.leadership.lead_until(ms_at(valid_until));
            self.leadership.seen_self();
            let deposed = self.leadership.inner.deposed.notified();
            tokio::pin!(deposed);
            let (mut keeper, mut renewals) = client.lease_keep_alive(lease).await?;
            let mut watch = client
                .watch(
                    self.key.clone(),
                    Some(WatchOptions::new().with_start_revision(revision + 1)),
                )
                .await?;
            let every = granted / 3;
            let mut next_renewal = Instant::now() + every;
            let mut renewing: Option<Instant> = None;
            let lost = loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_renewal) => {
                        renewing.get_or_insert(Instant::now());
                        keeper.keep_alive().await?;
                        next_renewal = Instant::now() + every;
                    }
                    renewal = renewals.message() => match renewal? {
                        Some(r) if r.ttl() > 0 => {
                            if let Some(asked) = renewing.take() {
                                let ttl = Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0));
                                valid_until = asked + ttl;
                                self.leadership.lead_until(ms_at(valid_until));
                            }
                        }
                        Some(_) => break "its lease expired before a renewal reached etcd",
                        None => break "etcd closed the lease's renewals",
                    },
                    _ = tokio::time::sleep_until(valid_until) => {
                        break "it could not renew its lease in time";
                    }
                    message = watch.message() => match message? {
                        Some(r) if r.canceled() || r.compact_revision() > 0 => {
                            break "etcd ended the watch on the leader key";
                        }
                        Some(r) => {
                            if r.events().iter().any(|e| e.event_type() == EventType::Delete
                                || e.kv().is_some_and(|kv| kv.lease() != lease))
                            {
                                break "the leader key was removed or taken over";
                            }
                        }
                        None => break "etcd ended the watch on the leader key",
                    },
                    () = &mut deposed => {
                        break "etcd refused its rollout write: the leader key is no longer its own";
                    }
                    _ = resign.changed() => {
                        self.leadership.lead_until(0);
                        self.leadership.inner.term.store(None);
                        // Best effort: a lease not revoked expires on its own.
                        let _ = tokio::time::timeout(
                            self.settings.timeout,
                            client.lease_revoke(lease),
                        )
                        .await;
                        tracing::info!("rollout leader: this replica gave the lead back");
                        return Ok(Ended::Resigned);
                    }
                }
            };
            self.leadership.lead_until(0);
            self.leadership.inner.term.store(None);
            tracing::warn!(
                reason = lost,
                "rollout leader: this replica stopped leading; it campaigns again, and another \
                 replica may lead meanwhile"
            );
            self.leadership.seen(None);
            let _ = tokio::time::timeout(self.settings.timeout, client.lease_revoke(lease)).await;
            Ok(Ended::Again)
        }
    }

    /// `at` on `clock::now_ms`'s scale.
    fn ms_at(at: Instant) -> u64 {
        let now = Instant::now();
        let now_ms = crate::clock::now_ms();
        match at.checked_duration_since(now) {
            Some(ahead) => now_ms.saturating_add(u64::try_from(ahead.as_millis()).unwrap_or(0)),
            None => now_ms.saturating_sub(
                u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX),
            ),
        }
    }
}
