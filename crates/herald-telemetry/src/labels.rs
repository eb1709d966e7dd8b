//! The values metric labels take, as enums: a label value is never a free string, so a typo
//! cannot make a new series and every value is listed here.

macro_rules! label {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }
    };
}

label! {
    /// Why a stream connection ended.
    CloseReason {
        /// The client went away.
        Client = "client",
        /// The server drained.
        Drain = "drain",
        /// The store failed during replay or catch-up.
        Error = "error",
        /// The client's token expired (after `event: herald.auth`).
        Expired = "expired",
    }
}

label! {
    /// Why a stream was refused.
    Rejection {
        /// `--max-connections` reached.
        Limit = "limit",
        /// The server is draining.
        Draining = "draining",
    }
}

label! {
    /// Where replayed events were read from.
    Tier {
        /// The gateway's window of recent events.
        Window = "window",
        /// JetStream.
        Jetstream = "jetstream",
        /// MongoDB.
        Mongodb = "mongodb",
    }
}

label! {
    /// A store operation that failed.
    StoreOp {
        /// A publish's append.
        Append = "append",
        /// A replay or history read.
        Read = "read",
        /// Reading the bounds (earliest, head).
        Bounds = "bounds",
        /// The archiver's write to MongoDB.
        Archive = "archive",
    }
}

label! {
    /// A bus operation that failed.
    BusOp {
        /// The live feed.
        Feed = "feed",
        /// A PUBLISH on the Redis bus.
        RedisPublish = "redis_publish",
    }
}

label! {
    /// A JetStream consumer whose pending messages are measured.
    Consumer {
        /// The gateway's live feed.
        Live = "live",
        /// The ingest's archiver.
        Archiver = "archiver",
    }
}

label! {
    /// How a publish request ended.
    PublishOutcome {
        /// Stored.
        Created = "created",
        /// Answered from its idempotency key.
        Duplicate = "duplicate",
        /// Refused (4xx).
        Rejected = "rejected",
        /// A backend was unavailable (5xx).
        Unavailable = "unavailable",
    }
}

label! {
    /// Which way the Redis bridge moved a message.
    BridgeDirection {
        /// Redis into Herald.
        FromRedis = "from_redis",
        /// Herald out to Redis.
        ToRedis = "to_redis",
    }
}

label! {
    /// What the Redis bridge did with a message.
    BridgeOutcome {
        /// Published on the other side.
        Published = "published",
        /// Already bridged (its idempotency key answered).
        Duplicate = "duplicate",
        /// It came from the other side (loop prevention).
        SkippedLoop = "skipped_loop",
        /// Its topic is not bridged.
        SkippedTopic = "skipped_topic",
        /// It could not be read as an event.
        Invalid = "invalid",
        /// Publishing it failed.
        Failed = "failed",
    }
}

label! {
    /// What became of a browser's lag report sample.
    SampleResult {
        /// Counted in the histogram.
        Accepted = "accepted",
        /// For an event the gateway does not know.
        Unknown = "unknown",
        /// Not a valid sample.
        Invalid = "invalid",
    }
}
