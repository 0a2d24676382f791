//! What a cell parses from the control plane: a feed response (`GET /internal/feed`, parsed as
//! the client does) applied to its view, and the view it persisted (`view.json`), then turned
//! into switch tables as the cell publishes them.
//!
//! Input: the first byte picks the mode: 0 a feed response applied to an empty view, 1 the same
//! on a view that already holds a snapshot, 2 a persisted view. The rest is the JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapestry::cell::view::{build_snapshot, CellView};
use tapestry_fuzz::cell::{config, containers, seeded_view};
use tapestry_policy::feed::View;
use tapestry_policy::model::FeedResponse;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, json)) = data.split_first() else {
        return;
    };
    let view = match sel % 3 {
        0 | 1 => {
            let Ok(resp) = serde_json::from_slice::<FeedResponse>(json) else {
                return;
            };
            let mut view = if sel % 3 == 0 {
                View::new()
            } else {
                seeded_view()
            };
            let snapshot = resp.snapshot.is_some();
            let changes = !resp.changes.is_empty();
            let changed = view.apply(resp);
            assert!(!snapshot || changed, "a snapshot is a change");
            assert!(
                !changed || snapshot || changes,
                "no change without a snapshot or changes"
            );
            if snapshot {
                assert!(view.version().is_some(), "synced after a snapshot");
            }
            view
        }
        _ => {
            let Ok(view) = serde_json::from_slice::<View>(json) else {
                return;
            };
            view
        }
    };
    // The cell persists the view before it enforces it, and reloads it after a restart.
    let stored = serde_json::to_vec(&view).expect("a view serialises");
    let back: View = serde_json::from_slice(&stored).expect("a persisted view loads");
    assert_eq!(back, view, "view persistence round trip");
    let cv = CellView::from_view(view);
    let _ = build_snapshot(&config(), &cv, &containers());
});
