/* FanFlow H5 tracking code. Dependency-free. Served by the gateway at /v1/sdk.js.
 *
 * <script src="https://GATEWAY/v1/sdk.js" data-site="SITE" data-openid="OPENID-IF-KNOWN"></script>
 *
 * Sends page views, dwell time, clicks (elements with data-ff-click="name") and shares to
 * /v1/collect with navigator.sendBeacon (fetch keepalive, then an image pixel, as fallbacks).
 * A stable client id lives in localStorage. Shared links carry ff_sb=<sharer>, so a visit through
 * a share records who shared to whom.
 *
 * An openid the page names is only a claim (`subject.verified: false`): it earns no points. A
 * page that holds a member token (minted by the brand's server) passes it with
 * FanFlow.init({ token }) or FanFlow.setToken(token): the beacons are then the member's, and a
 * share can earn points.
 * The gateway refuses a whole batch with an expired token (401), and sendBeacon cannot see that
 * answer, so the SDK reads the expiry from the token (`m1.<member>.<expiry>.<mac>`) and stops
 * sending it 30 seconds before then: later beacons go out as claims until the page sets a new one.
 * The token never goes into the pixel URL (the last fallback), where access logs would keep it:
 * a batch sent that way is a claim.
 */
(function (window, document) {
  "use strict";
  if (window.FanFlow && window.FanFlow._loaded) return;

  var SHARE_PARAM = "ff_sb";
  var script = document.currentScript || (function () {
    var all = document.getElementsByTagName("script");
    return all[all.length - 1];
  })();
  var state = {
    endpoint: script && script.src ? script.src.replace(/\/v1\/sdk\.js.*$/, "") : "",
    site: script && script.getAttribute("data-site"),
    openid: script && script.getAttribute("data-openid"),
    token: null,
    queue: [],
    timer: null,
    shownAt: Date.now(),
    visibleMs: 0
  };

  function uuid() {
    var b = new Uint8Array(16);
    (window.crypto || window.msCrypto).getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = [];
    for (var i = 0; i < 16; i++) h.push((b[i] + 0x100).toString(16).slice(1));
    return h.slice(0, 4).join("") + "-" + h.slice(4, 6).join("") + "-" + h.slice(6, 8).join("") + "-" +
      h.slice(8, 10).join("") + "-" + h.slice(10).join("");
  }

  function clientId() {
    var key = "ff_cid", id = null;
    try { id = window.localStorage.getItem(key); } catch (e) { /* private mode */ }
    if (!id) {
      var match = document.cookie.match(/(?:^|; )ff_cid=([^;]+)/);
      id = match ? decodeURIComponent(match[1]) : uuid();
      try { window.localStorage.setItem(key, id); } catch (e) { /* ignore */ }
      document.cookie = "ff_cid=" + encodeURIComponent(id) + "; path=/; max-age=63072000; SameSite=Lax";
    }
    return id;
  }

  function sharedBy() {
    var match = window.location.search.match(new RegExp("[?&]" + SHARE_PARAM + "=([^&#]+)"));
    return match ? decodeURIComponent(match[1]) : null;
  }

  function now() { return new Date().toISOString(); }

  function track(type, fields) {
    if (!state.site) return;
    var event = { id: uuid(), type: type, occurredAt: now(), url: String(window.location.href).slice(0, 2048),
      title: String(document.title || "").slice(0, 512), referrer: String(document.referrer || "").slice(0, 2048) };
    if (state.openid) event.openid = state.openid;
    var by = sharedBy();
    if (by) event.sharedBy = by;
    for (var k in fields) if (Object.prototype.hasOwnProperty.call(fields, k)) event[k] = fields[k];
    state.queue.push(event);
    if (state.queue.length >= 20) flush(); else schedule();
  }

  function schedule() {
    if (state.timer) return;
    state.timer = window.setTimeout(flush, 1000);
  }

  /** The token to send, or null: a token that is not `m1.<member>.<expiry>.<mac>` or expires
   * within 30 s is dropped, since the gateway would refuse the whole batch. */
  function liveToken() {
    var m = /^m1\.[0-9]+\.([0-9]+)\.[A-Za-z0-9_-]+$/.exec(state.token || "");
    if (!m || Number(m[1]) * 1000 <= Date.now() + 30000) { state.token = null; return null; }
    return state.token;
  }

  function flush() {
    if (state.timer) { window.clearTimeout(state.timer); state.timer = null; }
    if (!state.queue.length) return;
    var payload = { site: state.site, clientId: clientId(), events: state.queue.splice(0, 50) };
    var pixelBatch = JSON.stringify(payload);
    // In the body, not a header: sendBeacon cannot set headers. Never in the pixel's URL.
    var token = liveToken();
    if (token) payload.token = token;
    var batch = JSON.stringify(payload);
    var url = state.endpoint + "/v1/collect?site=" + encodeURIComponent(state.site);
    var sent = false;
    try {
      if (navigator.sendBeacon) sent = navigator.sendBeacon(url, new Blob([batch], { type: "text/plain" }));
    } catch (e) { sent = false; }
    if (!sent && window.fetch) {
      try {
        window.fetch(url, { method: "POST", body: batch, keepalive: true, headers: { "Content-Type": "text/plain" } });
        sent = true;
      } catch (e) { sent = false; }
    }
    if (!sent) {
      new Image().src = state.endpoint + "/v1/collect.gif?site=" + encodeURIComponent(state.site) + "&d=" + encodeURIComponent(pixelBatch);
    }
    if (state.queue.length) schedule();
  }

  /** A link to this page (or `url`) tagged with who shares it. */
  function shareLink(url) {
    var target = url || window.location.href.replace(new RegExp("([?&])" + SHARE_PARAM + "=[^&#]*&?"), "$1").replace(/[?&]$/, "");
    var sharer = state.openid || clientId();
    var hash = "", i = target.indexOf("#");
    if (i >= 0) { hash = target.slice(i); target = target.slice(0, i); }
    return target + (target.indexOf("?") >= 0 ? "&" : "?") + SHARE_PARAM + "=" + encodeURIComponent(sharer) + hash;
  }

  /** Records a share (channel: "moments", "friend", …) and returns the tagged link to share. */
  function share(channel, url) {
    var link = shareLink(url);
    track("share", { channel: String(channel || "unknown").slice(0, 32), sharedUrl: link });
    return link;
  }

  function dwell() {
    if (document.visibilityState === "hidden") {
      state.visibleMs += Date.now() - state.shownAt;
      if (state.visibleMs > 0) track("dwell", { dwellMs: state.visibleMs });
      state.visibleMs = 0;
      flush();
    } else {
      state.shownAt = Date.now();
    }
  }

  document.addEventListener("click", function (e) {
    var node = e.target;
    while (node && node !== document) {
      if (node.getAttribute && node.getAttribute("data-ff-click")) {
        track("click", { target: String(node.getAttribute("data-ff-click")).slice(0, 128) });
        return;
      }
      node = node.parentNode;
    }
  }, true);
  document.addEventListener("visibilitychange", dwell);
  window.addEventListener("pagehide", function () { if (document.visibilityState !== "hidden") { state.visibleMs += Date.now() - state.shownAt; track("dwell", { dwellMs: state.visibleMs }); state.shownAt = Date.now(); state.visibleMs = 0; } flush(); });

  window.FanFlow = {
    _loaded: true,
    /** Overrides the script tag's settings: { endpoint, site, openid, token }. */
    init: function (options) {
      options = options || {};
      if (options.endpoint) state.endpoint = options.endpoint.replace(/\/$/, "");
      if (options.site) state.site = options.site;
      if (options.openid) state.openid = options.openid;
      if (options.token) state.token = options.token;
    },
    /** A member token (or null to drop it): beacons sent with it are the member's, verified. */
    setToken: function (token) { state.token = token || null; },
    identify: function (openid) { state.openid = openid; },
    track: track,
    share: share,
    shareLink: shareLink,
    flush: flush,
    clientId: clientId
  };
  if (state.site) track("page_view", {});
})(window, document);
