#!/usr/bin/env bash
# The veer side of a release, shared by github-actions.yml and Jenkinsfile:
# each pipeline calls one phase at a time and acts on its exit status.
#
#   release.sh start     set the canary's revision and the rollout block in
#                        $CONFIG_FILE and check it (offline: the pipeline that
#                        edits the file has no secrets); exit 0 with the file
#                        changed, 10 when it already rolls out $REVISION (a
#                        re-run: gate on that rollout), 11 when $REVISION is
#                        already stable (nothing to do)
#   release.sh loaded    wait until veer has loaded $REVISION (exit 0), or
#                        fail when veer refused the new file (exit 4)
#   release.sh gate      `veer wait` with a timeout computed from the
#                        rollout, and its exit status made plain:
#                          0 completed
#                          1 rolled back by veer (guard trip, `veer rollback`,
#                            manual weights): the pipeline rolls back its side
#                          2 no verdict in time: the rollout goes on in veer;
#                            the pipeline fails, rolls back nothing
#                          3 admin API unreachable or token refused, after
#                            $VEER_RETRIES retries
#                          64 a usage error (a bug in the pipeline)
#   release.sh finish    make the candidate the new stable in $CONFIG_FILE:
#                        stable at $REVISION with all traffic, no rollout block
#
# Environment: SERVICE, REVISION, CONFIG_FILE; VEER_ADMIN (admin API URL);
# VEER_TOKEN_FILE (a file holding the admin token, written by the CI from its
# secret store; never the token on a command line). Optional: STEPS_YAML (the
# rollout's steps, default `[10, 25, 50, 100]`), HOLD (default 10m),
# VEER_WAIT_TIMEOUT (seconds, instead of the computed one), VEER_WAIT_MARGIN
# (seconds added to 1.5 x the rollout's least remaining time, default 900),
# VEER_RETRIES (default 3) and VEER_RETRY_DELAY (seconds, default 20).
# Needs veer, jq and mikefarah yq v4 (for start and finish).
set -euo pipefail

phase=${1:?usage: release.sh start|loaded|gate|finish}
: "${SERVICE:?set SERVICE}" "${REVISION:?set REVISION}"

token_args=()
if [ -n "${VEER_TOKEN_FILE:-}" ]; then
    token_args=(--token-file "$VEER_TOKEN_FILE")
fi

say() { printf 'release: %s\n' "$*"; }

status_json() {
    veer status --json "${token_args[@]}"
}

case "$phase" in
start)
    : "${CONFIG_FILE:?set CONFIG_FILE}"
    revision_of() {
        SERVICE=$SERVICE VERSION=$1 yq '.services[] | select(.name == strenv(SERVICE)) | .versions[] | select(.name == strenv(VERSION)) | .revision' "$CONFIG_FILE"
    }
    if [ "$(revision_of stable)" = "$REVISION" ]; then
        say "$SERVICE $REVISION is already the stable revision; nothing to release"
        exit 11
    fi
    if [ "$(revision_of canary)" = "$REVISION" ]; then
        # A re-run of the same release: the file already asks for it, and
        # veer already has (or had) its rollout. Committing nothing is right;
        # the gate reports how that rollout stands (a rolled-back revision
        # stays latched until a new revision or an operator's `veer resume`).
        say "$CONFIG_FILE already rolls out $SERVICE $REVISION; nothing to change"
        exit 10
    fi
    SERVICE=$SERVICE REVISION=$REVISION STEPS_YAML=${STEPS_YAML:-"[10, 25, 50, 100]"} HOLD=${HOLD:-10m} yq -i '
      (.services[] | select(.name == strenv(SERVICE)) | .versions[] | select(.name == "canary") | .revision) = strenv(REVISION) |
      (.services[] | select(.name == strenv(SERVICE)) | .versions[] | select(.name == "canary") | .revision) style="double" |
      (.services[] | select(.name == strenv(SERVICE)) | .rollout) = {"candidate": "canary", "steps": (strenv(STEPS_YAML) | from_yaml), "hold": strenv(HOLD)}
    ' "$CONFIG_FILE"
    veer check --offline -c "$CONFIG_FILE"
    ;;

loaded)
    # Until the GitOps sync lands, /status shows the previous rollout (often
    # `completed`): the gate must not start before.
    for _ in $(seq 1 "${LOAD_POLLS:-120}"); do
        if report=$(status_json 2>/dev/null); then
            if jq -e '.config.last_reload.result == "failure"' <<<"$report" >/dev/null; then
                jq -r '.config.last_reload.errors[]' <<<"$report" >&2
                say "veer refused the new config and keeps serving the old one" >&2
                exit 4
            fi
            loaded=$(jq -r --arg s "$SERVICE" '.services[] | select(.name == $s) | .rollout.revision // empty' <<<"$report")
            if [ "$loaded" = "$REVISION" ]; then
                say "veer has loaded $SERVICE $REVISION"
                exit 0
            fi
        fi
        sleep "${LOAD_POLL_DELAY:-5}"
    done
    say "veer did not load $SERVICE $REVISION in time" >&2
    exit 4
    ;;

gate)
    attempts=$(( ${VEER_RETRIES:-3} + 1 ))
    for attempt in $(seq 1 "$attempts"); do
        timeout=${VEER_WAIT_TIMEOUT:-}
        if [ -z "$timeout" ]; then
            # 1.5 x the least time the rest of the rollout takes, plus a
            # margin: a slow step must not fail the pipeline. A manual step
            # ahead has no bound: take MANUAL_TIMEOUT (default 24h).
            if report=$(status_json 2>/dev/null); then
                remaining=$(jq -r --arg s "$SERVICE" '.services[] | select(.name == $s) | .rollout.min_remaining_ms // "manual"' <<<"$report")
                if [ "$remaining" = "manual" ]; then
                    timeout=${MANUAL_TIMEOUT:-86400}
                else
                    timeout=$(( remaining * 3 / 2000 + ${VEER_WAIT_MARGIN:-900} ))
                fi
            else
                timeout=${MANUAL_TIMEOUT:-86400}
            fi
        fi
        say "waiting up to ${timeout}s for $SERVICE $REVISION (attempt $attempt of $attempts)"
        set +e
        veer wait "$SERVICE" --revision "$REVISION" --timeout "${timeout}s" "${token_args[@]}"
        code=$?
        set -e
        case "$code" in
        0) say "$SERVICE $REVISION completed: its last step held with no trip"; exit 0 ;;
        1) say "veer rolled $SERVICE $REVISION back; traffic is on stable" >&2; exit 1 ;;
        2) say "no verdict on $SERVICE $REVISION in ${timeout}s; the rollout goes on in veer: promote, pause or roll back by hand" >&2; exit 2 ;;
        3) say "veer's admin API unreachable or refusing the token" >&2
           if [ "$attempt" -lt "$attempts" ]; then sleep "${VEER_RETRY_DELAY:-20}"; fi ;;
        *) say "veer wait failed with $code (a usage error: check SERVICE and the pipeline)" >&2; exit 64 ;;
        esac
    done
    exit 3
    ;;

finish)
    : "${CONFIG_FILE:?set CONFIG_FILE}"
    SERVICE=$SERVICE REVISION=$REVISION yq -i '
      (.services[] | select(.name == strenv(SERVICE)) | .versions[] | select(.name == "stable") | .revision) = strenv(REVISION) |
      (.services[] | select(.name == strenv(SERVICE)) | .versions[] | select(.name == "stable") | .revision) style="double" |
      (.services[] | select(.name == strenv(SERVICE)) | .versions[] | select(.name == "stable") | .weight) = 100 |
      (.services[] | select(.name == strenv(SERVICE)) | .versions[] | select(.name == "canary") | .weight) = 0 |
      del(.services[] | select(.name == strenv(SERVICE)) | .rollout)
    ' "$CONFIG_FILE"
    veer check --offline -c "$CONFIG_FILE"
    ;;

*)
    echo "usage: release.sh start|loaded|gate|finish" >&2
    exit 64
    ;;
esac
