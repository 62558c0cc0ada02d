#!/bin/sh
# Verify an export of Kakuin's audit log (`kakuin audit export`) with a POSIX shell, sed, tr,
# cut, sha256sum and openssl only: no Kakuin, no Python, no JSON parser. docs/audit.md explains
# each step and the formats.
#
#   sh audit-verify.sh audit.pem export.jsonl
#
# Exit 0 and one "OK" line: every event's hash was recomputed from its canonical bytes, every
# event links to the one before it, and the last event is signed by a checkpoint whose signature
# verifies with audit.pem. Otherwise exit 1 and one "BAD: line N: …" line naming what is wrong.
set -eu
LC_ALL=C # sed works on bytes: the canonical bytes are cut out exactly, whatever their UTF-8
export LC_ALL

[ $# -eq 2 ] || {
	echo "usage: sh audit-verify.sh audit.pem export.jsonl" >&2
	exit 2
}
key=$1
input=$2
work=${TMPDIR:-/tmp}/kakuin-audit-verify.$$
mkdir -m 700 "$work"
trap 'rm -rf "$work"' EXIT
trap 'exit 1' INT TERM

n=0
bad() {
	echo "BAD: line $n: $*" >&2
	exit 1
}
hex='[0-9a-f]\{64\}'
zero=0000000000000000000000000000000000000000000000000000000000000000
key_id=$(openssl pkey -pubin -in "$key" -outform DER | sha256sum | cut -d' ' -f1)
events=0
checkpoints=0
first=
last_seq=
last_hash=
covered=no

while IFS= read -r line || [ -n "$line" ]; do
	n=$((n + 1))
	case $line in
	'{"type":"event",'*)
		# The canonical bytes: after the fixed prefix, up to the line's final "}".
		printf '%s\n' "$line" |
			sed -n "s|^{\"type\":\"event\",\"seq\":[0-9]*,\"hash\":\"$hex\",\"event\":\(.*\)}\$|\1|p" |
			tr -d '\n' >"$work/event"
		[ -s "$work/event" ] || bad "not an event line"
		said=$(printf '%s\n' "$line" | sed -n "s|^{\"type\":\"event\",\"seq\":[0-9]*,\"hash\":\"\($hex\)\".*|\1|p")
		hash=$(sha256sum <"$work/event" | cut -d' ' -f1)
		[ "$hash" = "$said" ] || bad "the event's bytes hash to $hash, the line says $said"
		# Inside the canonical JSON a '"' in a string is always escaped, so these keys are the
		# event's own: "prev_hash" comes before "sealed_at", "seq" before "serial" (sorted keys).
		seq=$(sed -n 's|.*,"seq":\([0-9]*\),"serial":.*|\1|p' "$work/event")
		prev=$(sed -n "s|.*,\"prev_hash\":\"\($hex\)\",\"sealed_at\":.*|\1|p" "$work/event")
		[ -n "$seq" ] && [ -n "$prev" ] || bad "the event has no seq or prev_hash"
		if [ -n "$last_seq" ]; then
			[ "$seq" -eq $((last_seq + 1)) ] || bad "seq $seq follows seq $last_seq"
			[ "$prev" = "$last_hash" ] || bad "seq $seq does not link to seq $last_seq"
		elif [ "$seq" -eq 1 ] && [ "$prev" != "$zero" ]; then
			bad "seq 1 must link to the zero hash"
		fi
		[ -n "$first" ] || first=$seq
		last_seq=$seq
		last_hash=$hash
		covered=no
		events=$((events + 1))
		;;
	'{"type":"checkpoint",'*)
		b64='[A-Za-z0-9+/=]*'
		printf '%s\n' "$line" |
			sed -n "s|^{\"type\":\"checkpoint\",\"seq\":[0-9]*,\"head_hash\":\"$hex\",\"signature\":\"$b64\",\"checkpoint\":\(.*\)}\$|\1|p" |
			tr -d '\n' >"$work/checkpoint"
		[ -s "$work/checkpoint" ] || bad "not a checkpoint line"
		printf '%s\n' "$line" |
			sed -n "s|^{\"type\":\"checkpoint\",\"seq\":[0-9]*,\"head_hash\":\"$hex\",\"signature\":\"\($b64\)\".*|\1|p" |
			openssl base64 -d -A >"$work/signature"
		openssl dgst -sha256 -verify "$key" -signature "$work/signature" "$work/checkpoint" >/dev/null 2>&1 ||
			bad "the checkpoint's signature does not verify with $key"
		seq=$(sed -n 's|.*,"seq":\([0-9]*\)}$|\1|p' "$work/checkpoint")
		head=$(sed -n "s|.*,\"head_hash\":\"\($hex\)\",\"key_id\":.*|\1|p" "$work/checkpoint")
		signer=$(sed -n "s|.*,\"key_id\":\"\($hex\)\",\"reason\":.*|\1|p" "$work/checkpoint")
		[ "$signer" = "$key_id" ] || bad "the checkpoint names key $signer, $key is $key_id"
		[ -n "$last_seq" ] && [ "$seq" = "$last_seq" ] && [ "$head" = "$last_hash" ] ||
			bad "the checkpoint signs seq $seq hash $head; the events before it end at seq ${last_seq:-none} hash ${last_hash:-none}"
		covered=yes
		checkpoints=$((checkpoints + 1))
		;;
	*) bad "neither an event nor a checkpoint" ;;
	esac
done <"$input"

n=end
[ "$events" -gt 0 ] || bad "no events in $input"
[ "$covered" = yes ] || bad "seq $last_seq, the last event, is not covered by a signed checkpoint"
echo "OK: $events events (seq $first..$last_seq) and $checkpoints checkpoints verified with $key"
