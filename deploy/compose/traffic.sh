#!/bin/sh
# The compose set-up's traffic: synthetic AWS WAF logs (`gatewatch generate`) produced to
# Kafka with Kafka's own console producer, as a gateway's log shipper would.
#
#   traffic.sh history   two hours of history ending now, with one attack of each kind in
#                        its last 40 minutes; the compose config shortens the learning
#                        periods to 30 minutes, so the attacks are alerted as soon as
#                        gatewatch has read it. It is produced whole before gatewatch
#                        starts, as a backlog would be.
#   traffic.sh live      live traffic without attacks, stamped with the wall clock, ten
#                        seconds of it every ten seconds.
#
# The same seed every time: the same clients, keys and tokens, so that the live traffic
# goes on from what the history taught.
set -eu

broker=${BROKER:-kafka:9092}
topic=${TOPIC:-waf-logs}
rate=${RATE:-5} # requests a second of event time
seed=${SEED:-1}
kafka_bin=${KAFKA_BIN:-/opt/kafka/bin} # the test puts a stand-in speaking kcat here

rfc3339() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }

produce() {
	"$kafka_bin/kafka-console-producer.sh" --bootstrap-server "$broker" --topic "$topic" \
		--producer-property linger.ms=100 --producer-property compression.type=lz4
}

case ${1:-} in
history)
	gatewatch generate --format awswaf --seed "$seed" --rate "$rate" --duration 2h \
		--start "$(rfc3339 $(($(date -u +%s) - 7200)))" | produce
	;;
live)
	while :; do
		gatewatch generate --format awswaf --seed "$seed" --rate "$rate" --duration 10s --attacks '' \
			--start "$(rfc3339 "$(date -u +%s)")" 2>/dev/null
		sleep 10
	done | produce
	;;
*)
	echo "usage: traffic.sh history|live" >&2
	exit 2
	;;
esac
