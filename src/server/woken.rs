//! A future that is polled only when its own waker has fired.
//!
//! A connection task waits on its HTTP connection and, beside it, on its idle
//! clock and on the drain signal. `tokio::select!` polls every branch each
//! time the task wakes, and the task wakes twice per request for the HTTP
//! side alone: re-polling the idle timer and the drain watch every time cost
//! about 550 instructions per request (callgrind), for futures that fire
//! once in a connection's life. Wrapped in `PollWhenWoken`, they are polled
//! once to register, then again only after their own wake-up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pub struct PollWhenWoken<F> {
    inner: Pin<Box<F>>,
    signal: Arc<Signal>,
}

struct Signal {
    woken: AtomicBool,
    /// The task to wake; locked only when the inner future is polled or
    /// fires, never on the task's other wake-ups.
    parent: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let parent = self.parent.lock().map(|mut p| p.take()).unwrap_or(None);
        if let Some(parent) = parent {
            parent.wake();
        }
    }
}

impl<F: Future> PollWhenWoken<F> {
    pub fn new(inner: F) -> PollWhenWoken<F> {
        PollWhenWoken {
            inner: Box::pin(inner),
            signal: Arc::new(Signal {
                woken: AtomicBool::new(true),
                parent: Mutex::new(None),
            }),
        }
    }
}

impl<F: Future> Future for PollWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if !this.signal.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        if let Ok(mut parent) = this.signal.parent.lock() {
            *parent = Some(cx.waker().clone());
        }
        let waker = Waker::from(Arc::clone(&this.signal));
        this.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready on the third.
    struct Counted(Arc<AtomicUsize>);

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0.fetch_add(1, Ordering::SeqCst) >= 2 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn polled_only_after_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut future = PollWhenWoken::new(Counted(Arc::clone(&polls)));
        let mut cx = Context::from_waker(Waker::noop());
        // First poll registers; it woke itself, so the next poll goes in.
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut future).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn not_polled_without_a_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut future = PollWhenWoken::new(std::future::poll_fn({
            let polls = Arc::clone(&polls);
            move |_| {
                polls.fetch_add(1, Ordering::SeqCst);
                Poll::<()>::Pending
            }
        }));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..5 {
            assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_inside_still_fires() {
        let slept = PollWhenWoken::new(tokio::time::sleep(Duration::from_secs(5)));
        tokio::time::timeout(Duration::from_secs(6), slept)
            .await
            .expect("the wrapped sleep completes");
    }
}
