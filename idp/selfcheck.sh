#!/usr/bin/env bash
# Self-check for storefront-idp: starts server.js on a free local port and
# drives real OpenID Connect flows against it with curl.
#
# Needs: bash, curl, openssl, base64 (coreutils), and node (which runs the
# IdP anyway; it also runs a 10-line receiver for back-channel logout POSTs).
#
# Usage: bash selfcheck.sh            (from anywhere)
#        SELFCHECK_PORT=4555 bash selfcheck.sh
# Prints PASS/FAIL per step and "N passed, N failed"; exits non-zero on the
# first failure (later steps depend on earlier ones).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE="${NODE:-node}"
START_PORT="${SELFCHECK_PORT:-4555}"
CLIENT_ID=storefront
CLIENT_SECRET=storefront-dev-secret
REDIRECT_URI=http://127.0.0.1:9999/callback
POST_LOGOUT_URI=http://127.0.0.1:9999/

TMP="$(mktemp -d "${TMPDIR:-/tmp}/idp-selfcheck.XXXXXX")"
IDP_PID=""
BC_PID=""
PASSED=0
FAILED=0

cleanup() {
  [ -n "$IDP_PID" ] && kill "$IDP_PID" 2>/dev/null && wait "$IDP_PID" 2>/dev/null
  [ -n "$BC_PID" ] && kill "$BC_PID" 2>/dev/null && wait "$BC_PID" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

finish() {
  echo "selfcheck: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
  exit $?
}

pass() { PASSED=$((PASSED + 1)); echo "PASS: $1"; }
fail() {
  FAILED=$((FAILED + 1))
  echo "FAIL: $1${2:+ -- $2}"
  if [ -f "$TMP/idp.log" ]; then
    echo "---- last lines of the IdP log ----"
    tail -n 25 "$TMP/idp.log"
    echo "-----------------------------------"
  fi
  finish
}
# check NAME COMMAND...: PASS if the command succeeds, else FAIL and stop.
check() {
  local name="$1"; shift
  if "$@"; then pass "$name"; else fail "$name" "${DETAIL:-}"; fi
  DETAIL=""
}
DETAIL=""

# ---- small helpers --------------------------------------------------------

# json_str KEY JSON: value of a string member (good enough for tokens/ids)
json_str() { printf '%s' "$2" | grep -o "\"$1\":\"[^\"]*\"" | head -n 1 | sed 's/^"[^"]*":"\(.*\)"$/\1/'; }
# query_param NAME URL: raw (still percent-encoded) query parameter
query_param() { printf '%s' "$2" | sed -n "s/.*[?&]$1=\([^&#]*\).*/\1/p"; }
urldecode() { local s="${1//+/ }"; printf '%b' "${s//%/\\x}"; }
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
b64url_decode() {
  local s
  s="$(printf '%s' "$1" | tr '_-' '/+')"
  case $(( ${#s} % 4 )) in 2) s="$s==" ;; 3) s="$s=" ;; esac
  printf '%s' "$s" | base64 -d 2>/dev/null
}
jwt_payload() { b64url_decode "$(printf '%s' "$1" | cut -d. -f2)"; }
contains() { case "$1" in *"$2"*) return 0 ;; *) DETAIL="expected to find $2 in: ${1:0:400}"; return 1 ;; esac; }

# curl wrapper: never follows redirects; prints "<status> <location>"
# and leaves the body in $TMP/body.
req() { curl -sS -o "$TMP/body" -w '%{http_code} %{redirect_url}' "$@"; }
body() { cat "$TMP/body"; }

port_free() { ! curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null; }

# ---- start a back-channel logout receiver and the IdP ---------------------

"$NODE" -e '
const http = require("http"), fs = require("fs");
const out = process.argv[1];
const s = http.createServer((req, res) => {
  let b = "";
  req.on("data", (c) => { b += c; });
  req.on("end", () => { fs.appendFileSync(out, `${req.method} ${req.url} ${b}\n`); res.end(); });
});
s.listen(0, "127.0.0.1", () => fs.writeFileSync(`${out}.port`, String(s.address().port)));
' "$TMP/bc.log" &
BC_PID=$!

PORT=""
for p in $(seq "$START_PORT" $((START_PORT + 20))); do
  if port_free "$p"; then PORT=$p; break; fi
done
[ -n "$PORT" ] || fail "find a free port" "none free in $START_PORT..$((START_PORT + 20))"

for _ in $(seq 1 50); do [ -s "$TMP/bc.log.port" ] && break; sleep 0.1; done
BC_PORT="$(cat "$TMP/bc.log.port" 2>/dev/null)"
[ -n "$BC_PORT" ] || fail "start back-channel logout receiver"

ISSUER="http://127.0.0.1:$PORT"
( cd "$HERE" && exec env IDP_PORT="$PORT" IDP_HOST=127.0.0.1 IDP_ISSUER="$ISSUER" \
    IDP_CLIENT_ID="$CLIENT_ID" IDP_CLIENT_SECRET="$CLIENT_SECRET" \
    IDP_REDIRECT_URIS="$REDIRECT_URI" IDP_POST_LOGOUT_REDIRECT_URIS="$POST_LOGOUT_URI" \
    IDP_BACKCHANNEL_LOGOUT_URI="http://127.0.0.1:$BC_PORT/backchannel-logout" \
    IDP_TEST_ENDPOINTS=1 IDP_AUTO_CONSENT=1 IDP_KEY_FILE= NODE_ENV=development \
    "$NODE" server.js ) >"$TMP/idp.log" 2>&1 &
IDP_PID=$!

started=""
for _ in $(seq 1 150); do
  if grep -q "storefront-idp listening on $ISSUER" "$TMP/idp.log"; then started=1; break; fi
  kill -0 "$IDP_PID" 2>/dev/null || break
  sleep 0.1
done
check "IdP starts and prints 'storefront-idp listening on $ISSUER'" test -n "$started"

# ---- discovery ------------------------------------------------------------

read -r status _ < <(req "$ISSUER/.well-known/openid-configuration")
DISCOVERY="$(body)"
check "discovery document (200)" test "$status" = 200
check "discovery: issuer, endpoints, iss-parameter, auth methods" eval '
  contains "$DISCOVERY" "\"issuer\":\"$ISSUER\"" &&
  contains "$DISCOVERY" "\"authorization_endpoint\":\"$ISSUER/auth\"" &&
  contains "$DISCOVERY" "\"token_endpoint\":\"$ISSUER/token\"" &&
  contains "$DISCOVERY" "\"userinfo_endpoint\":\"$ISSUER/me\"" &&
  contains "$DISCOVERY" "\"revocation_endpoint\":\"$ISSUER/token/revocation\"" &&
  contains "$DISCOVERY" "\"end_session_endpoint\":\"$ISSUER/session/end\"" &&
  contains "$DISCOVERY" "\"jwks_uri\":\"$ISSUER/jwks\"" &&
  contains "$DISCOVERY" "\"authorization_response_iss_parameter_supported\":true" &&
  contains "$DISCOVERY" "\"backchannel_logout_supported\":true" &&
  contains "$DISCOVERY" "\"token_endpoint_auth_methods_supported\":[\"client_secret_basic\",\"client_secret_post\"]"'

read -r status _ < <(req "$ISSUER/jwks")
JWKS="$(body)"
check "jwks: one public RS256 key, no private members" eval '
  test "$status" = 200 && contains "$JWKS" "\"alg\":\"RS256\"" && ! contains "$JWKS" "\"d\":"'

# ---- the authorization code flow -------------------------------------------

# start_auth JAR [extra curl args]: GET /auth with fresh state/nonce/PKCE.
# Sets STATE NONCE VERIFIER, and status / location of the response.
start_auth() {
  local jar="$1"; shift
  STATE="st-$(openssl rand -hex 8)"
  NONCE="n-$(openssl rand -hex 8)"
  VERIFIER="$(openssl rand 48 | b64url)"
  local challenge
  challenge="$(printf '%s' "$VERIFIER" | openssl dgst -sha256 -binary | b64url)"
  read -r status location < <(req -c "$jar" -b "$jar" -G "$ISSUER/auth" \
    --data-urlencode "client_id=$CLIENT_ID" \
    --data-urlencode "response_type=code" \
    --data-urlencode "scope=${SCOPE:-openid email profile groups}" \
    --data-urlencode "redirect_uri=$REDIRECT_URI" \
    --data-urlencode "state=$STATE" \
    --data-urlencode "nonce=$NONCE" \
    --data-urlencode "code_challenge=$challenge" \
    --data-urlencode "code_challenge_method=S256" ${PROMPT:+--data-urlencode "prompt=$PROMPT"} "$@")
}

# follow_to_callback JAR LOCATION: follows redirects (GET) until the Location
# points at the client's redirect_uri (which is not requested). Sets CALLBACK.
follow_to_callback() {
  local jar="$1" location="$2" status hops=0
  CALLBACK=""
  while [ -n "$location" ] && [ $hops -lt 10 ]; do
    case "$location" in
      "$REDIRECT_URI"\?*) CALLBACK="$location"; return 0 ;;
    esac
    read -r status location < <(req -c "$jar" -b "$jar" "$location")
    hops=$((hops + 1))
    case "$status" in 30[0-9]) ;; *) DETAIL="stopped at status $status: $(body | head -c 300)"; return 1 ;; esac
  done
  DETAIL="no redirect to $REDIRECT_URI after $hops hops"
  return 1
}

# token_request [curl args...]: POST /token, body in $TOKEN_JSON, status in $TOKEN_STATUS
token_request() {
  read -r TOKEN_STATUS _ < <(req -X POST "$ISSUER/token" "$@")
  TOKEN_JSON="$(body)"
}
BASIC=(-u "$CLIENT_ID:$CLIENT_SECRET")

JAR="$TMP/alice.jar"
start_auth "$JAR"
check "GET /auth -> 303 to /interaction/<uid>" eval '
  test "$status" = 303 && contains "$location" "$ISSUER/interaction/"'
INTERACTION="$location"
UID_="${INTERACTION##*/interaction/}"

read -r status _ < <(req -c "$JAR" -b "$JAR" "$INTERACTION")
FORM="$(body)"
check "GET /interaction/<uid> renders the login form" eval '
  test "$status" = 200 &&
  contains "$FORM" "action=\"/interaction/$UID_/login\"" &&
  contains "$FORM" "id=\"login\" name=\"login\"" &&
  contains "$FORM" "id=\"password\" name=\"password\"" &&
  contains "$FORM" "id=\"submit\""'

read -r status _ < <(req -c "$JAR" -b "$JAR" -X POST "$ISSUER/interaction/$UID_/login" \
  --data-urlencode "login=alice\"><script>" --data-urlencode "password=wrong")
FORM="$(body)"
check "wrong password -> 401, error shown, input escaped" eval '
  test "$status" = 401 && contains "$FORM" "id=\"error\"" &&
  contains "$FORM" "value=\"alice&quot;&gt;&lt;script&gt;\"" && ! contains "$FORM" "\"><script>"'
DETAIL=""

read -r status location < <(req -c "$JAR" -b "$JAR" -X POST "$ISSUER/interaction/$UID_/login" \
  --data-urlencode "login=alice" --data-urlencode "password=alice-password")
check "POST login alice -> 303 back to /auth/<uid>" eval '
  test "$status" = 303 && contains "$location" "$ISSUER/auth/"'

check "redirects end at $REDIRECT_URI (consent auto-granted)" follow_to_callback "$JAR" "$location"
CODE="$(query_param code "$CALLBACK")"
check "callback has code, the same state and iss=$ISSUER" eval '
  test -n "$CODE" &&
  test "$(query_param state "$CALLBACK")" = "$STATE" &&
  test "$(urldecode "$(query_param iss "$CALLBACK")")" = "$ISSUER"'

token_request "${BASIC[@]}" --data-urlencode grant_type=authorization_code \
  --data-urlencode "code=$CODE" --data-urlencode "redirect_uri=$REDIRECT_URI" \
  --data-urlencode "code_verifier=$VERIFIER"
AT1="$(json_str access_token "$TOKEN_JSON")"
RT1="$(json_str refresh_token "$TOKEN_JSON")"
IDT1="$(json_str id_token "$TOKEN_JSON")"
check "POST /token (client_secret_basic) -> access_token, refresh_token, id_token" eval '
  test "$TOKEN_STATUS" = 200 && test -n "$AT1" && test -n "$RT1" && test -n "$IDT1"'

CLAIMS="$(jwt_payload "$IDT1")"
check "id_token: iss, aud, sub=alice, nonce, email, name, groups" eval '
  contains "$CLAIMS" "\"iss\":\"$ISSUER\"" && contains "$CLAIMS" "\"aud\":\"$CLIENT_ID\"" &&
  contains "$CLAIMS" "\"sub\":\"alice\"" && contains "$CLAIMS" "\"nonce\":\"$NONCE\"" &&
  contains "$CLAIMS" "\"email\":\"alice@example.com\"" &&
  contains "$CLAIMS" "\"name\":\"Alice Admin\"" &&
  contains "$CLAIMS" "\"groups\":[\"admins\"]" && contains "$CLAIMS" "\"sid\":"'

read -r status _ < <(req -H "Authorization: Bearer $AT1" "$ISSUER/me")
USERINFO="$(body)"
check "GET /me (userinfo) with the access token" eval '
  test "$status" = 200 && contains "$USERINFO" "\"sub\":\"alice\"" &&
  contains "$USERINFO" "\"email\":\"alice@example.com\"" &&
  contains "$USERINFO" "\"email_verified\":true" &&
  contains "$USERINFO" "\"preferred_username\":\"alice\"" &&
  contains "$USERINFO" "\"groups\":[\"admins\"]"'

token_request "${BASIC[@]}" --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$RT1"
AT2="$(json_str access_token "$TOKEN_JSON")"
RT2="$(json_str refresh_token "$TOKEN_JSON")"
check "refresh_token grant -> new tokens, rotated refresh token differs" eval '
  test "$TOKEN_STATUS" = 200 && test -n "$AT2" && test -n "$RT2" &&
  test "$RT2" != "$RT1" && test "$AT2" != "$AT1" && test -n "$(json_str id_token "$TOKEN_JSON")"'

token_request "${BASIC[@]}" --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$RT1"
check "reusing the rotated (old) refresh token -> invalid_grant" eval '
  test "$TOKEN_STATUS" = 400 && contains "$TOKEN_JSON" "\"error\":\"invalid_grant\""'

token_request "${BASIC[@]}" --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$RT2"
check "reuse detection revoked the whole grant: the new refresh token fails too" eval '
  test "$TOKEN_STATUS" = 400 && contains "$TOKEN_JSON" "\"error\":\"invalid_grant\""'

# Second flow in the same browser session: no login form, consent is
# auto-granted again (the grant was revoked), straight back to the client.
start_auth "$JAR"
check "second /auth with the IdP session cookie -> back to the client without a form" \
  follow_to_callback "$JAR" "$location"
CODE="$(query_param code "$CALLBACK")"
token_request --data-urlencode grant_type=authorization_code \
  --data-urlencode "client_id=$CLIENT_ID" --data-urlencode "client_secret=$CLIENT_SECRET" \
  --data-urlencode "code=$CODE" --data-urlencode "redirect_uri=$REDIRECT_URI" \
  --data-urlencode "code_verifier=$VERIFIER"
AT3="$(json_str access_token "$TOKEN_JSON")"
RT3="$(json_str refresh_token "$TOKEN_JSON")"
check "POST /token with client_secret_post works too" eval '
  test "$TOKEN_STATUS" = 200 && test -n "$AT3" && test -n "$RT3"'

read -r status location < <(req -G "$ISSUER/auth" --data-urlencode "client_id=$CLIENT_ID" \
  --data-urlencode response_type=code --data-urlencode scope=openid \
  --data-urlencode "redirect_uri=$REDIRECT_URI" --data-urlencode state=x)
check "/auth without code_challenge -> error redirect to the client" eval '
  test "$status" = 303 && contains "$location" "error=invalid_request"'

read -r status _ < <(req "${BASIC[@]}" -X POST "$ISSUER/token/revocation" \
  --data-urlencode "token=$RT3" --data-urlencode token_type_hint=refresh_token)
check "POST /token/revocation (refresh token) -> 200" test "$status" = 200

token_request "${BASIC[@]}" --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$RT3"
check "revoked refresh token -> invalid_grant" eval '
  test "$TOKEN_STATUS" = 400 && contains "$TOKEN_JSON" "\"error\":\"invalid_grant\""'

read -r status _ < <(req -H "Authorization: Bearer $AT3" "$ISSUER/me")
check "revoking the refresh token revoked its grant: access token rejected by /me (401)" test "$status" = 401

read -r status _ < <(req "$ISSUER/_test/stats")
STATS="$(body)"
check "GET /_test/stats counts grants and revocations" eval '
  test "$status" = 200 &&
  contains "$STATS" "\"grants\":{\"authorization_code\":2,\"refresh_token\":1}" &&
  contains "$STATS" "\"revocations\":1" && contains "$STATS" "\"backchannel_logouts_sent\":0"'

# ---- RP-initiated logout with back-channel logout ---------------------------

start_auth "$JAR"
follow_to_callback "$JAR" "$location" || fail "third flow for alice" "$DETAIL"
token_request "${BASIC[@]}" --data-urlencode grant_type=authorization_code \
  --data-urlencode "code=$(query_param code "$CALLBACK")" --data-urlencode "redirect_uri=$REDIRECT_URI" \
  --data-urlencode "code_verifier=$VERIFIER"
IDT4="$(json_str id_token "$TOKEN_JSON")"
RT4="$(json_str refresh_token "$TOKEN_JSON")"
SID="$(json_str sid "$(jwt_payload "$IDT4")")"
check "third flow: tokens with a sid" eval 'test -n "$IDT4" && test -n "$RT4" && test -n "$SID"'

read -r status _ < <(req -c "$JAR" -b "$JAR" -G "$ISSUER/session/end" \
  --data-urlencode "id_token_hint=$IDT4" --data-urlencode "post_logout_redirect_uri=$POST_LOGOUT_URI" \
  --data-urlencode "state=bye")
LOGOUT="$(body)"
XSRF="$(printf '%s' "$LOGOUT" | sed -n 's/.*name="xsrf" value="\([^"]*\)".*/\1/p' | head -n 1)"
check "GET /session/end renders the sign-out form (xsrf, button id=logout)" eval '
  test "$status" = 200 && test -n "$XSRF" && contains "$LOGOUT" "id=\"logout\""'

read -r status location < <(req -c "$JAR" -b "$JAR" -X POST "$ISSUER/session/end/confirm" \
  --data-urlencode "xsrf=$XSRF" --data-urlencode logout=yes)
check "POST /session/end/confirm -> 303 to post_logout_redirect_uri with state" eval '
  test "$status" = 303 && test "$location" = "${POST_LOGOUT_URI}?state=bye"'

LOGOUT_TOKEN="$(sed -n 's/^POST \/backchannel-logout logout_token=\([^ &]*\).*/\1/p' "$TMP/bc.log" | tail -n 1)"
LT_CLAIMS="$(jwt_payload "$LOGOUT_TOKEN")"
check "back-channel logout token POSTed to the client: sub, sid, events, no nonce" eval '
  test -n "$LOGOUT_TOKEN" && contains "$LT_CLAIMS" "\"sub\":\"alice\"" &&
  contains "$LT_CLAIMS" "\"sid\":\"$SID\"" && contains "$LT_CLAIMS" "\"aud\":\"$CLIENT_ID\"" &&
  contains "$LT_CLAIMS" "http://schemas.openid.net/event/backchannel-logout" &&
  ! contains "$LT_CLAIMS" "\"nonce\""'
DETAIL=""

token_request "${BASIC[@]}" --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$RT4"
check "after logout the session's refresh token is dead (invalid_grant)" eval '
  test "$TOKEN_STATUS" = 400 && contains "$TOKEN_JSON" "\"error\":\"invalid_grant\""'

# ---- /_test helpers: end-sessions and revoke-grants ---------------------------

# login_as USER JAR: full flow with the login form; sets RT AT IDT
login_as() {
  local user="$1" jar="$2" status location uid
  start_auth "$jar"
  uid="${location##*/interaction/}"
  read -r status location < <(req -c "$jar" -b "$jar" -X POST "$ISSUER/interaction/$uid/login" \
    --data-urlencode "login=$user" --data-urlencode "password=$user-password")
  [ "$status" = 303 ] || { DETAIL="login POST gave $status"; return 1; }
  follow_to_callback "$jar" "$location" || return 1
  token_request "${BASIC[@]}" --data-urlencode grant_type=authorization_code \
    --data-urlencode "code=$(query_param code "$CALLBACK")" --data-urlencode "redirect_uri=$REDIRECT_URI" \
    --data-urlencode "code_verifier=$VERIFIER"
  RT="$(json_str refresh_token "$TOKEN_JSON")"
  AT="$(json_str access_token "$TOKEN_JSON")"
  IDT="$(json_str id_token "$TOKEN_JSON")"
  [ -n "$RT" ] || DETAIL="token response: $TOKEN_JSON"
  [ -n "$RT" ]
}

check "login as bob (groups customers)" eval 'login_as bob "$TMP/bob.jar" && contains "$(jwt_payload "$IDT")" "\"groups\":[\"customers\"]"'
BC_BEFORE="$(grep -c . "$TMP/bc.log" 2>/dev/null || true)"
read -r status _ < <(req -X POST "$ISSUER/_test/end-sessions?sub=bob")
ENDS="$(body)"
check "POST /_test/end-sessions?sub=bob -> 1 session ended, 1 back-channel logout sent" eval '
  test "$status" = 200 && contains "$ENDS" "\"sessions_ended\":1" &&
  contains "$ENDS" "\"backchannel_logouts_sent\":1" && contains "$ENDS" "\"backchannel_logouts_failed\":0"'
BC_AFTER="$(grep -c . "$TMP/bc.log" 2>/dev/null || true)"
check "the receiver got bob's logout token" eval '
  test "$BC_AFTER" -gt "$BC_BEFORE" && contains "$(jwt_payload "$(tail -n 1 "$TMP/bc.log" | sed "s/.*logout_token=//")")" "\"sub\":\"bob\""'
token_request "${BASIC[@]}" --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$RT"
check "bob's refresh token is dead after end-sessions" eval '
  test "$TOKEN_STATUS" = 400 && contains "$TOKEN_JSON" "\"error\":\"invalid_grant\""'

# offline_access is only honoured together with prompt=consent (OIDC Core 11)
SCOPE="openid email profile groups offline_access" PROMPT=consent
check "login as load-test user user42 with offline_access + prompt=consent" eval '
  login_as user42 "$TMP/u42.jar" && contains "$TOKEN_JSON" "offline_access" &&
  contains "$(jwt_payload "$IDT")" "\"email\":\"user42@example.com\""'
SCOPE="" PROMPT=""
read -r status _ < <(req -X POST "$ISSUER/_test/end-sessions?sub=user42")
ENDS="$(body)"
check "end-sessions for user42: session ended, offline grant kept" eval '
  test "$status" = 200 && contains "$ENDS" "\"sessions_ended\":1" && contains "$ENDS" "\"grants_revoked\":0"'
token_request "${BASIC[@]}" --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$RT"
RT="$(json_str refresh_token "$TOKEN_JSON")"
check "user42's offline refresh token still works after the logout" eval 'test "$TOKEN_STATUS" = 200 && test -n "$RT"'
read -r status _ < <(req -X POST "$ISSUER/_test/revoke-grants?sub=user42")
REVOKED="$(body)"
check "POST /_test/revoke-grants?sub=user42 -> grants_revoked 1" eval '
  test "$status" = 200 && contains "$REVOKED" "\"grants_revoked\":1"'
token_request "${BASIC[@]}" --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$RT"
check "user42's refresh token is dead after revoke-grants" eval '
  test "$TOKEN_STATUS" = 400 && contains "$TOKEN_JSON" "\"error\":\"invalid_grant\""'

# carol: PKCE verification and authorization code replay
JAR="$TMP/carol.jar"
start_auth "$JAR"
UID_="${location##*/interaction/}"
read -r status location < <(req -c "$JAR" -b "$JAR" -X POST "$ISSUER/interaction/$UID_/login" \
  --data-urlencode "login=carol" --data-urlencode "password=carol-password")
follow_to_callback "$JAR" "$location" || fail "login as carol" "$DETAIL"
CODE="$(query_param code "$CALLBACK")"
token_request "${BASIC[@]}" --data-urlencode grant_type=authorization_code \
  --data-urlencode "code=$CODE" --data-urlencode "redirect_uri=$REDIRECT_URI"
check "token request without code_verifier -> invalid_grant (PKCE enforced)" eval '
  test "$TOKEN_STATUS" = 400 && contains "$TOKEN_JSON" "\"error\":\"invalid_grant\""'
token_request "${BASIC[@]}" --data-urlencode grant_type=authorization_code \
  --data-urlencode "code=$CODE" --data-urlencode "redirect_uri=$REDIRECT_URI" \
  --data-urlencode "code_verifier=$(openssl rand 48 | b64url)"
check "token request with a wrong code_verifier -> invalid_grant" eval '
  test "$TOKEN_STATUS" = 400 && contains "$TOKEN_JSON" "\"error\":\"invalid_grant\""'
token_request "${BASIC[@]}" --data-urlencode grant_type=authorization_code \
  --data-urlencode "code=$CODE" --data-urlencode "redirect_uri=$REDIRECT_URI" \
  --data-urlencode "code_verifier=$VERIFIER"
AT="$(json_str access_token "$TOKEN_JSON")"
check "carol: right code_verifier -> tokens, id_token groups []" eval '
  test "$TOKEN_STATUS" = 200 && test -n "$AT" &&
  contains "$(jwt_payload "$(json_str id_token "$TOKEN_JSON")")" "\"groups\":[]"'
token_request "${BASIC[@]}" --data-urlencode grant_type=authorization_code \
  --data-urlencode "code=$CODE" --data-urlencode "redirect_uri=$REDIRECT_URI" \
  --data-urlencode "code_verifier=$VERIFIER"
check "the same code again -> invalid_grant" eval '
  test "$TOKEN_STATUS" = 400 && contains "$TOKEN_JSON" "\"error\":\"invalid_grant\""'
read -r status _ < <(req -H "Authorization: Bearer $AT" "$ISSUER/me")
check "code replay revoked the tokens issued from that code (/me -> 401)" test "$status" = 401

read -r status _ < <(req "$ISSUER/_test/stats")
STATS="$(body)"
check "stats after everything" eval '
  contains "$STATS" "\"grants\":{\"authorization_code\":6,\"refresh_token\":2}" &&
  contains "$STATS" "\"backchannel_logouts_sent\":3" && contains "$STATS" "\"backchannel_logouts_failed\":0" &&
  contains "$STATS" "\"revocations\":1"'
read -r status _ < <(req -X POST "$ISSUER/_test/reset-stats")
STATS="$(body)"
check "POST /_test/reset-stats zeroes the counters" eval '
  test "$status" = 200 && contains "$STATS" "\"grants\":{\"authorization_code\":0,\"refresh_token\":0}" &&
  contains "$STATS" "\"revocations\":0"'

check "no password or token in the IdP log" eval '
  ! grep -q -e "alice-password" -e "$RT1" -e "$AT1" -e "$CODE" "$TMP/idp.log" || { DETAIL="secret found in log"; false; }'

kill -TERM "$IDP_PID" 2>/dev/null
stopped=""
for _ in $(seq 1 50); do kill -0 "$IDP_PID" 2>/dev/null || { stopped=1; break; }; sleep 0.1; done
wait "$IDP_PID" 2>/dev/null; rc=$?
IDP_PID=""
check "SIGTERM stops the IdP cleanly (exit 0)" eval 'test -n "$stopped" && test "$rc" = 0'

finish
