//! [`Command::parse`]: a request's route and parameters turned into its command.

use super::*;

impl<'a> Command<'a> {
    /// Parses a request; 404 for no route, 405 (with `Allow`) for a wrong method, 400/413 for
    /// bad parameters and bodies.
    pub fn parse(parts: &'a impl Parts, limits: &Limits) -> Result<Self, Error> {
        let r = match route(parts.method(), parts.path()) {
            Ok(r) => r,
            Err(RouteError::NotFound) => {
                return Err(Error::new(
                    ErrorKind::UnknownRoute,
                    format!("no route for {}", parts.path()),
                ))
            }
            Err(RouteError::MethodNotAllowed(allow)) => {
                return Err(Error::method_not_allowed(allow))
            }
        };
        let q = parts.query();
        match query::ambiguous(q) {
            None => {}
            Some(query::Ambiguous::Repeated(name)) => {
                return Err(Error::param(format!(
                    "query parameter {name:?} is given more than once"
                )))
            }
            Some(query::Ambiguous::TooMany) => {
                return Err(Error::param(format!(
                    "more than {} query parameters",
                    query::MAX_PARAMS
                )))
            }
        }
        Ok(match r {
            Route::Alive => Command::Alive,
            Route::Ready => Command::Ready,
            Route::Metrics => Command::Metrics,
            Route::OpenApi => Command::OpenApi,
            Route::ProcessStatus => Command::ProcessStatus,
            Route::Publish { topic, ver } => {
                validate_part("topic", topic)?;
                validate_ver(ver)?;
                Command::Publish(publish(parts, q, topic, ver, limits)?)
            }
            Route::Subscribe { appid, topic, ver } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                Command::Subscribe(subscribe(parts, q, topic, limits)?)
            }
            Route::WsPublish { topic, ver } => {
                validate_part("topic", topic)?;
                validate_ver(ver)?;
                let template = publish_template(parts, q, topic, ver, limits)?;
                if template.due.is_some() {
                    return Err(Error::param(
                        "a WebSocket publish cannot be delayed: POST /v1/msgs with delay=",
                    ));
                }
                Command::Socket(Socket::Publish(template))
            }
            Route::WsSubscribe { appid, topic, ver } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                Command::Socket(Socket::Subscribe(subscribe(parts, q, topic, limits)?))
            }
            Route::AckBatch {
                appid,
                topic,
                ver,
                group,
            } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                validate_part("group", group)?;
                Command::AckBatch(AckBatch {
                    topic,
                    group,
                    acks: ack_list(&crate::gzip::body(parts, limits.max_batch_bytes)?)?,
                })
            }
            Route::Settle {
                appid,
                topic,
                ver,
                group,
                op,
            } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                validate_part("group", group)?;
                let body = crate::gzip::body(parts, limits.max_batch_bytes)?;
                Command::Settle(settle(parts, q, topic, group, op, &body)?)
            }
            Route::DeadLetters {
                method,
                appid,
                group,
                action,
            } => {
                validate_part("appid", appid)?;
                validate_part("group", group)?;
                let max = num(q, "max")?.unwrap_or(100usize);
                if !(1..=10_000).contains(&max) {
                    return Err(Error::param("max must be 1..=10000"));
                }
                let op = match (action, method) {
                    (None, Method::Delete) => DeadLetterOp::Purge,
                    (None, _) => DeadLetterOp::Count,
                    (Some("messages"), _) => DeadLetterOp::Peek { max },
                    _ => DeadLetterOp::Redrive {
                        max,
                        to: match query::raw(q, "to") {
                            None => None,
                            Some(t) => Some(redrive_target(appid, t)?),
                        },
                    },
                };
                Command::DeadLetters(DeadLetters { appid, group, op })
            }
            Route::Seek {
                appid,
                topic,
                ver,
                group,
                partition,
            } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                validate_part("group", group)?;
                let partition = partition
                    .parse()
                    .map_err(|_| bad_ack(format!("partition {partition:?} does not exist")))?;
                if query::raw(q, "time").is_some() {
                    return Err(Error::param("seeking by time is not supported: use offset"));
                }
                let offset =
                    num(q, "offset")?.ok_or_else(|| Error::param("missing offset parameter"))?;
                Command::Seek(Seek {
                    topic,
                    group,
                    partition,
                    offset,
                })
            }
            Route::Topic {
                method,
                appid,
                topic,
                ver,
            } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                let partitions: Option<u32> = num(q, "partitions")?;
                if partitions.is_some_and(|p| p == 0 || p > 10_000) {
                    return Err(Error::param("partitions must be 1..=10000"));
                }
                let retention_bytes = match query::raw(q, "retention.bytes") {
                    None => None,
                    Some(v) => Some(parse_size(v).map_err(Error::param)?),
                };
                let retention_hours: Option<u64> = num(q, "retention.hours")?;
                if retention_hours.is_some_and(|h| h > MAX_RETENTION_HOURS) {
                    return Err(Error::param(format!(
                        "retention.hours must be 0..={MAX_RETENTION_HOURS} (100 years)"
                    )));
                }
                if retention_bytes.is_some_and(|b| b > i64::MAX as u64) {
                    return Err(Error::param("retention.bytes must be below 2^63"));
                }
                Command::TopicAdmin(TopicAdmin {
                    op: match method {
                        Method::Post => TopicOp::Create,
                        Method::Put => TopicOp::Alter,
                        _ => TopicOp::Delete,
                    },
                    topic,
                    partitions,
                    retention_hours,
                    retention_bytes,
                })
            }
            Route::Partitions { appid, topic, ver } => {
                Command::Partitions(TopicPath::new(appid, topic, ver)?)
            }
            Route::TopicStatus { appid, topic, ver } => {
                let group = query::raw(q, "group").filter(|g| !g.is_empty());
                if let Some(g) = group {
                    validate_part("group", g)?;
                }
                Command::TopicStatus {
                    topic: TopicPath::new(appid, topic, ver)?,
                    group,
                }
            }
            Route::Admin(r) => Command::Admin(admin::admin(parts, q, r, limits)?),
            Route::Delays {
                method,
                topic,
                ver,
                id,
            } => {
                validate_part("topic", topic)?;
                validate_ver(ver)?;
                let op = match (id, method) {
                    (None, _) => {
                        let max = num(q, "max")?.unwrap_or(100usize);
                        if !(1..=10_000).contains(&max) {
                            return Err(Error::param("max must be 1..=10000"));
                        }
                        DelayOp::List { max }
                    }
                    (Some(id), Method::Delete) => DelayOp::Cancel(id),
                    (Some(id), _) => DelayOp::Peek(id),
                };
                Command::Delays(Delays { topic, ver, op })
            }
            Route::Webhook {
                method,
                appid,
                topic,
                ver,
                group,
                action,
            } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                validate_part("group", group)?;
                let op = match (action, method) {
                    (Some("pause"), _) => WebhookOp::Pause,
                    (Some("resume"), _) => WebhookOp::Resume,
                    (Some(_), _) => WebhookOp::Log,
                    (None, Method::Delete) => WebhookOp::Delete,
                    (None, Method::Put) => {
                        let body = crate::gzip::body(parts, 64 * 1024)?;
                        let crate::json::Obj(p): crate::json::Obj<WebhookParams> =
                            serde_json::from_slice(&body).map_err(|e| {
                                Error::new(ErrorKind::InvalidBody, format!("webhook: {e}"))
                            })?;
                        WebhookOp::Put(p)
                    }
                    (None, _) => WebhookOp::Get,
                };
                Command::Webhook(Webhook { topic, group, op })
            }
            Route::Clock => {
                let advance = query::raw(q, "advance")
                    .ok_or_else(|| Error::param("missing advance parameter (a duration)"))?;
                let advance = kateway_core::units::parse_duration(advance).map_err(Error::param)?;
                // The clock never runs more than 100 years ahead in one step (nor overflows).
                if advance > Duration::from_secs(MAX_RETENTION_HOURS * 3600) {
                    return Err(Error::param("advance must be at most 100 years (36500d)"));
                }
                Command::Clock { advance }
            }
            Route::Reload => Command::Reload,
            Route::Ui => Command::Ui,
            Route::Dashboard => Command::Dashboard {
                events: parts.header("accept").is_some_and(|a| {
                    a.windows(crate::sse::CONTENT_TYPE.len())
                        .any(|w| w.eq_ignore_ascii_case(crate::sse::CONTENT_TYPE.as_bytes()))
                }),
                app: match query::raw(q, "app") {
                    None => None,
                    Some(a) => {
                        kateway_core::names::validate_part("app", a)?;
                        Some(a)
                    }
                },
            },
            Route::Browse { appid, topic, ver } => Command::Browse {
                topic: TopicPath::new(appid, topic, ver)?,
                partition: num(q, "partition")?.unwrap_or(0),
                n: match num(q, "n")?.unwrap_or(20usize) {
                    n @ 1..=1000 => n,
                    n => return Err(Error::param(format!("n = {n}: 1 to 1000 messages"))),
                },
            },
        })
    }
}
