#!/bin/sh
# The compose set-up's traffic: synthetic AWS WAF logs (`gatewatch generate`) produced to
# Kafka with Kafka's own console producer, as a gateway's log shipper would.
#
# First two hours of history ending now, with one attack of each kind in its last 40
# minutes, so the detectors have learnt (the compose config shortens their learning
# periods to 30 minutes) and the attacks are alerted as soon as gatewatch has read it;
# then live traffic without attacks, stamped with the wall clock, every ten seconds.
# The same seed every time: the same clients, keys and tokens, so the live traffic
# continues what the history taught.
set -eu

broker=${BROKER:-kafka:9092}
topic=${TOPIC:-waf-logs}
rate=${RATE:-5} # requests a second of event time
seed=${SEED:-1}
kafka_bin=${KAFKA_BIN:-/opt/kafka/bin} # the test puts a stand-in speaking kcat here

rfc3339() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }

backlog() {
	gatewatch generate --format awswaf --seed "$seed" --rate "$rate" --duration 2h \
		--start "$(rfc3339 $(($(date -u +%s) - 7200)))"
}

live() {
	while :; do
		gatewatch generate --format awswaf --seed "$seed" --rate "$rate" --duration 10s --attacks '' \
			--start "$(rfc3339 "$(date -u +%s)")" 2>/dev/null
		sleep 10
	done
}

{
	backlog
	live
} | "$kafka_bin/kafka-console-producer.sh" --bootstrap-server "$broker" --topic "$topic" \
	--producer-property linger.ms=100 --producer-property compression.type=lz4
