#!/usr/bin/env bash
# The Git and cluster side of a release on the manifests of
# examples/kubernetes/ (kept in the config repo at the same path), shared by
# the Jenkinsfile's stages. The cluster follows the config repo through Argo
# CD or Flux: the pipeline changes Git, then waits for the cluster to show it.
#
#   gitops.sh set-image DEPLOYMENT IMAGE   set the `app` container's image of
#                                          DEPLOYMENT in its manifest
#   gitops.sh image-of DEPLOYMENT          print that image, as Git has it
#   gitops.sh commit MESSAGE               commit what changed in the config
#                                          repo and push it (rebasing on what
#                                          others pushed meanwhile); exit 0
#                                          with nothing to commit too
#   gitops.sh rolled-out DEPLOYMENT IMAGE  wait until the cluster runs IMAGE in
#                                          DEPLOYMENT (the sync landed, then
#                                          `kubectl rollout status`)
#
# Environment: CONFIG_DIR (the config repo's checkout, default `config`),
# NAMESPACE (default production), SYNC_POLLS (default 90) and SYNC_DELAY
# (seconds, default 10): how long to wait for Argo CD or Flux to apply a
# commit. Needs git, mikefarah yq v4 and kubectl.
set -euo pipefail

phase=${1:?usage: gitops.sh set-image|image-of|commit|rolled-out ...}
config=${CONFIG_DIR:-config}
namespace=${NAMESPACE:-production}
manifests="$config/examples/kubernetes"

say() { printf 'gitops: %s\n' "$*"; }

# The file that holds a Deployment: the canary recipe's, or the blue-green
# one's.
manifest_of() {
    local file
    for file in "$manifests/canary/agent-match.yaml" "$manifests/blue-green/agent-match.yaml"; do
        if DEPLOYMENT=$1 yq -e 'select(.kind == "Deployment" and .metadata.name == strenv(DEPLOYMENT))' "$file" >/dev/null 2>&1; then
            printf '%s\n' "$file"
            return 0
        fi
    done
    say "no Deployment $1 under $manifests" >&2
    return 1
}

case "$phase" in
set-image)
    deployment=${2:?usage: gitops.sh set-image DEPLOYMENT IMAGE}
    image=${3:?usage: gitops.sh set-image DEPLOYMENT IMAGE}
    file=$(manifest_of "$deployment")
    DEPLOYMENT=$deployment IMAGE=$image yq -i '
      (select(.kind == "Deployment" and .metadata.name == strenv(DEPLOYMENT)) | .spec.template.spec.containers[] | select(.name == "app") | .image) = strenv(IMAGE)
    ' "$file"
    say "$deployment: image $image in $file"
    ;;

image-of)
    deployment=${2:?usage: gitops.sh image-of DEPLOYMENT}
    file=$(manifest_of "$deployment")
    DEPLOYMENT=$deployment yq '
      select(.kind == "Deployment" and .metadata.name == strenv(DEPLOYMENT)) | .spec.template.spec.containers[] | select(.name == "app") | .image
    ' "$file"
    ;;

commit)
    message=${2:?usage: gitops.sh commit MESSAGE}
    if git -C "$config" diff --quiet; then
        say "nothing to commit: the config repo already says so"
        exit 0
    fi
    git -C "$config" commit -qam "$message"
    for attempt in 1 2 3; do
        if git -C "$config" push -q origin HEAD:main; then
            say "pushed: $message"
            exit 0
        fi
        say "push refused (attempt $attempt): rebasing on what was pushed meanwhile" >&2
        git -C "$config" pull -q --rebase origin main
    done
    say "could not push to the config repo" >&2
    exit 1
    ;;

rolled-out)
    deployment=${2:?usage: gitops.sh rolled-out DEPLOYMENT IMAGE}
    image=${3:?usage: gitops.sh rolled-out DEPLOYMENT IMAGE}
    current=""
    for _ in $(seq 1 "${SYNC_POLLS:-90}"); do
        current=$(kubectl -n "$namespace" get "deployment/$deployment" \
            -o jsonpath='{.spec.template.spec.containers[?(@.name=="app")].image}')
        if [ "$current" = "$image" ]; then
            break
        fi
        sleep "${SYNC_DELAY:-10}"
    done
    if [ "$current" != "$image" ]; then
        say "$deployment still runs $current, not $image: has Argo CD / Flux synced the commit?" >&2
        exit 1
    fi
    kubectl -n "$namespace" rollout status "deployment/$deployment" --timeout=10m
    ;;

*)
    echo "usage: gitops.sh set-image|image-of|commit|rolled-out ..." >&2
    exit 64
    ;;
esac
