//! Topics, patterns and grants. Lines of the input: a grant, a requested topic or pattern, then
//! topics. For valid names, `covers(grant, requested)` must be sound: every topic the request matches, the grant
//! matches too (a grant never lets a subscription reach further than itself). A filter of
//! several names matches exactly what one of them matches.
#![no_main]

use herald_core::{Topic, TopicFilter, covers};
use libfuzzer_sys::fuzz_target;

fn filter(name: &str) -> Option<TopicFilter> {
    TopicFilter::parse([name]).ok()
}

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let mut lines = text.split('\n');
    let (Some(grant), Some(requested)) = (lines.next(), lines.next()) else {
        return;
    };
    let topics: Vec<&str> = lines.collect();
    // `covers` is defined on valid names (the server parses a request before it checks grants).
    let (g, r) = (filter(grant), filter(requested));
    let covered = g.is_some() && r.is_some() && covers(grant, requested);
    for topic in &topics {
        let valid = Topic::new(topic).is_ok();
        if let (true, Some(g), Some(r)) = (covered, &g, &r)
            && valid
            && r.matches(topic)
        {
            assert!(
                g.matches(topic),
                "{grant:?} covers {requested:?} but not {topic:?}"
            );
        }
    }
    if let Ok(both) = TopicFilter::parse([grant, requested]) {
        for topic in &topics {
            let one = |f: &Option<TopicFilter>| f.as_ref().is_some_and(|f| f.matches(topic));
            assert_eq!(both.matches(topic), one(&g) || one(&r), "{topic:?}");
        }
    }
});
