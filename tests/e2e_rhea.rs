//! End to end with rhea (Node.js) clients, and rhea talking to Qpid Proton
//! through the broker: an independent AMQP 1.0 implementation on each side.

mod common;

use common::*;

const BROKER_ARGS: &[&str] = &["--worker-threads", "2"];

#[test]
fn rhea_at_least_once_messages_are_accepted_and_arrive_in_order() {
    let broker = Broker::start(BROKER_ARGS);
    let sent = send(
        Lang::Rhea,
        &broker,
        "rhea-queue",
        300,
        &["--settle", "unsettled", "--prefix", "m-"],
    );
    assert_eq!(sent["accepted"].as_u64(), Some(300), "{sent}");
    assert_eq!(sent["settled"].as_u64(), Some(300), "{sent}");

    let received = receive(Lang::Rhea, &broker, "rhea-queue", 300, &[]);
    assert_eq!(received.bodies(), expected_bodies("m-", 300));
}

#[test]
fn rhea_sender_to_proton_receiver_keeps_bodies_subjects_and_properties() {
    let broker = Broker::start(BROKER_ARGS);
    let sent = send(
        Lang::Rhea,
        &broker,
        "rhea-to-proton",
        50,
        &[
            "--prefix",
            "rp-",
            "--subject",
            "interop",
            "--properties",
            r#"{"origin": "rhea", "colour": "red"}"#,
        ],
    );
    assert_eq!(sent["accepted"].as_u64(), Some(50), "{sent}");

    let received = receive(Lang::Proton, &broker, "rhea-to-proton", 50, &[]);
    assert_eq!(received.bodies(), expected_bodies("rp-", 50));
    for message in received.messages() {
        assert_eq!(message["subject"].as_str(), Some("interop"), "{message}");
        assert_eq!(
            message["properties"]["origin"].as_str(),
            Some("rhea"),
            "{message}"
        );
        assert_eq!(
            message["properties"]["colour"].as_str(),
            Some("red"),
            "{message}"
        );
    }
}

#[test]
fn proton_sender_to_rhea_receiver_keeps_bodies_subjects_and_properties() {
    let broker = Broker::start(BROKER_ARGS);
    // The receiver attaches first: the queue is created by the attach.
    let receiver = spawn_receiver(Lang::Rhea, &broker, "proton-to-rhea", 50, &[]);
    let sent = send(
        Lang::Proton,
        &broker,
        "proton-to-rhea",
        50,
        &[
            "--prefix",
            "pr-",
            "--subject",
            "interop",
            "--properties",
            r#"{"origin": "proton"}"#,
        ],
    );
    assert_eq!(sent["accepted"].as_u64(), Some(50), "{sent}");

    let received = receiver.wait();
    received.assert_success();
    assert_eq!(received.bodies(), expected_bodies("pr-", 50));
    for message in received.messages() {
        assert_eq!(message["subject"].as_str(), Some("interop"), "{message}");
        assert_eq!(
            message["properties"]["origin"].as_str(),
            Some("proton"),
            "{message}"
        );
    }
}

#[test]
fn rhea_topic_filter_routes_only_matching_subjects() {
    let broker = Broker::start(BROKER_ARGS);
    let eu_orders = spawn_receiver(
        Lang::Rhea,
        &broker,
        "amq.topic",
        4,
        &["--topic-filter", "orders.*.eu"],
    );
    let all_orders = spawn_receiver(
        Lang::Rhea,
        &broker,
        "amq.topic",
        8,
        &["--topic-filter", "orders.#"],
    );

    // Non-matching subjects first; the last batch matches both patterns.
    for (subject, prefix) in [
        ("invoices.new.eu", "i-"),
        ("orders.new.us", "u-"),
        ("orders.eu", "x-"),
        ("orders.old.eu", "e-"),
    ] {
        send(
            Lang::Rhea,
            &broker,
            "amq.topic",
            2,
            &["--subject", subject, "--prefix", prefix],
        );
    }
    // And a Proton publisher into the same subscriptions.
    send(
        Lang::Proton,
        &broker,
        "amq.topic",
        2,
        &["--subject", "orders.new.eu", "--prefix", "p-"],
    );

    let received = eu_orders.wait();
    received.assert_success();
    assert_eq!(
        received.bodies(),
        vec!["e-0", "e-1", "p-0", "p-1"],
        "orders.*.eu"
    );
    let received = all_orders.wait();
    received.assert_success();
    assert_eq!(
        received.bodies(),
        vec!["u-0", "u-1", "x-0", "x-1", "e-0", "e-1", "p-0", "p-1"],
        "orders.#"
    );
}
