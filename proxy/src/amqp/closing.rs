//! A channel closed after a denial, as pure state over frames: which frames of each side
//! are dropped until its `close-ok`, which crossing closes are answered, and which frames of
//! a re-opened channel are held until the broker confirmed the close.

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, channel};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::mpsc;

use super::Inject;
use super::frames::{Frame, channel_close_ok};

/// Where a channel stands after a denial.
#[derive(Debug, Default)]
pub(super) struct Closing {
    pub(super) client_close_ok: bool,
    pub(super) broker_close_ok: bool,
    /// Frames from the application for the channel re-opened before the broker confirmed.
    pub(super) held: VecDeque<Vec<u8>>,
}

/// What both directions of one connection share: the channels closing after a denial.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) closing: Mutex<HashMap<u16, Closing>>,
    /// How many channels are closing, so that every frame need not take the lock to learn
    /// that none is.
    pub(super) closing_now: std::sync::atomic::AtomicUsize,
}

impl Shared {
    pub(super) fn start_closing(&self, ch: u16) {
        let mut closing = self.closing.lock().expect("not poisoned");
        if closing.insert(ch, Closing::default()).is_none() {
            self.closing_now
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Applies `update` to channel `ch` if it is closing; `None` if it is not. When both
    /// sides have confirmed, the closing ends and its held application frames are returned.
    pub(super) fn on_closing(
        &self,
        ch: u16,
        update: impl FnOnce(&mut Closing),
    ) -> Option<Option<VecDeque<Vec<u8>>>> {
        if self.closing_now.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return None;
        }
        let mut closing = self.closing.lock().expect("not poisoned");
        let state = closing.get_mut(&ch)?;
        update(state);
        if !(state.client_close_ok && state.broker_close_ok) {
            return Some(None);
        }
        let done = closing.remove(&ch).expect("present");
        self.closing_now
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        Some(Some(done.held))
    }
}

/// What to do with an application frame on a channel closed after a denial: `None` if the
/// channel is not closing; otherwise the held frames it releases (usually none).
pub(super) fn client_frame_on_closing(
    shared: &Shared,
    ch: u16,
    frame: &Frame,
    to_client: &mpsc::UnboundedSender<Inject>,
) -> Option<VecDeque<Vec<u8>>> {
    let released = shared.on_closing(ch, |closing| match &frame.parsed {
        AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)))
            if !closing.client_close_ok =>
        {
            closing.client_close_ok = true;
        }
        AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(_)))
            if !closing.client_close_ok =>
        {
            // Crossing close: answer it; the application is done with the channel.
            closing.client_close_ok = true;
            let _ = to_client.send(Inject::ToClient(ch, channel_close_ok(ch)));
        }
        // A re-opened channel: held until the broker confirms the close.
        _ if closing.client_close_ok => closing.held.push_back(frame.raw.clone()),
        _ => {}
    })?;
    Some(released.unwrap_or_default())
}

/// The same for a broker frame: `None` if the channel is not closing. When the closing
/// completes, the held application frames go to the broker's writer.
pub(super) fn broker_frame_on_closing(
    shared: &Shared,
    ch: u16,
    frame: &Frame,
    to_broker: &mpsc::UnboundedSender<Inject>,
) -> Option<()> {
    let released = shared.on_closing(ch, |closing| match &frame.parsed {
        AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {
            closing.broker_close_ok = true;
        }
        AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
            // Crossing close from the broker: answer it; it counts as confirmed.
            closing.broker_close_ok = true;
            let _ = to_broker.send(Inject::ToBroker(channel_close_ok(ch)));
        }
        _ => {}
    })?;
    if let Some(held) = released.filter(|h| !h.is_empty()) {
        let _ = to_broker.send(Inject::ToBroker(held.into_iter().flatten().collect()));
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use amq_protocol::protocol::basic;

    use super::super::frames::encode;
    use super::*;

    fn frame(parsed: AMQPFrame) -> Frame {
        Frame {
            raw: encode(&parsed),
            parsed,
        }
    }

    fn close_ok(ch: u16) -> Frame {
        frame(AMQPFrame::Method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        ))
    }

    fn close(ch: u16) -> Frame {
        frame(AMQPFrame::Method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ))
    }

    fn open(ch: u16) -> Frame {
        frame(AMQPFrame::Method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ))
    }

    fn publish(ch: u16) -> Frame {
        frame(AMQPFrame::Method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "ex".into(),
                routing_key: "k".into(),
                ..Default::default()
            })),
        ))
    }

    fn drained(rx: &mut mpsc::UnboundedReceiver<Inject>) -> Vec<Inject> {
        let mut out = Vec::new();
        while let Ok(i) = rx.try_recv() {
            out.push(i);
        }
        out
    }

    #[test]
    fn channels_not_closing_are_left_alone() {
        let shared = Shared::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        assert!(client_frame_on_closing(&shared, 1, &publish(1), &tx).is_none());
        assert!(broker_frame_on_closing(&shared, 1, &close_ok(1), &tx).is_none());
        shared.start_closing(2);
        assert!(client_frame_on_closing(&shared, 1, &publish(1), &tx).is_none());
    }

    #[test]
    fn frames_are_dropped_until_both_close_oks_and_a_reopened_channel_waits_for_the_broker() {
        let shared = Shared::default();
        let (to_client, mut client_rx) = mpsc::unbounded_channel();
        let (to_broker, mut broker_rx) = mpsc::unbounded_channel();
        shared.start_closing(1);
        // The rest of the refused publish, and anything before the application's close-ok:
        // dropped, nothing released.
        let released = client_frame_on_closing(&shared, 1, &publish(1), &to_client).unwrap();
        assert!(released.is_empty());
        let released = client_frame_on_closing(&shared, 1, &close_ok(1), &to_client).unwrap();
        assert!(released.is_empty());
        // The application re-opens the channel and publishes: held, not sent.
        for f in [open(1), publish(1)] {
            let released = client_frame_on_closing(&shared, 1, &f, &to_client).unwrap();
            assert!(released.is_empty());
        }
        assert!(drained(&mut client_rx).is_empty());
        // The broker's close-ok ends the closing and releases the held frames, in order.
        assert!(broker_frame_on_closing(&shared, 1, &close_ok(1), &to_broker).is_some());
        let sent = drained(&mut broker_rx);
        assert_eq!(sent.len(), 1);
        let Inject::ToBroker(bytes) = &sent[0] else {
            panic!("held frames go to the broker");
        };
        assert_eq!(*bytes, [open(1).raw, publish(1).raw].concat());
        // The channel is no longer closing.
        assert!(client_frame_on_closing(&shared, 1, &publish(1), &to_client).is_none());
        assert_eq!(
            shared
                .closing_now
                .load(std::sync::atomic::Ordering::Acquire),
            0
        );
    }

    #[test]
    fn crossing_closes_are_answered_and_count_as_confirmed() {
        let shared = Shared::default();
        let (to_client, mut client_rx) = mpsc::unbounded_channel();
        let (to_broker, mut broker_rx) = mpsc::unbounded_channel();
        shared.start_closing(3);
        // The application closes the channel itself instead of answering ours.
        client_frame_on_closing(&shared, 3, &close(3), &to_client).unwrap();
        let answered = drained(&mut client_rx);
        assert!(
            matches!(&answered[..], [Inject::ToClient(3, bytes)] if *bytes == channel_close_ok(3)),
            "the application's close is answered with close-ok"
        );
        // So does the broker.
        broker_frame_on_closing(&shared, 3, &close(3), &to_broker).unwrap();
        let answered = drained(&mut broker_rx);
        assert!(
            matches!(&answered[..], [Inject::ToBroker(bytes)] if *bytes == channel_close_ok(3)),
            "the broker's close is answered with close-ok"
        );
        // Both confirmed: closing over, nothing was held.
        assert!(client_frame_on_closing(&shared, 3, &publish(3), &to_client).is_none());
    }

    #[test]
    fn a_second_denial_on_a_closing_channel_does_not_count_twice() {
        let shared = Shared::default();
        shared.start_closing(5);
        shared.start_closing(5);
        assert_eq!(
            shared
                .closing_now
                .load(std::sync::atomic::Ordering::Acquire),
            1
        );
    }
}
