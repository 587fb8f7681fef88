/* sdworker demo page: plain JavaScript, no dependencies, same-origin API.
 *
 * Stable element ids (for headless-browser tests):
 *   #api-key         API key, sent as Authorization: Bearer on every /v1/ request
 *                    and kept in localStorage ("sdworker.apiKey")
 *   #ready-status    service readiness text; class status-ready | status-waiting | status-down
 *   #job-form        the form; submitting it starts a job
 *   #operation       select: image_generation | image_transform | image_inpaint
 *   #model           select, filled from GET /v1/models
 *   #prompt #negative-prompt #steps #guidance #width #height #seed #sampler
 *   #lora-fields     fieldset, hidden when no LoRA fits the chosen model
 *   #loras           one row per LoRA fitting the model (GET /v1/models' loras):
 *                    input.lora-use (checkbox, data-lora = name) and input.lora-weight
 *   #init-image      file input (transform, inpaint)
 *   #strength        range 0.05-1 (transform, inpaint); #strength-out shows it
 *   #mask-canvas     canvas showing the init image; paint the area to repaint
 *   #brush-size #mask-clear
 *   #generate        submit button (disabled while a job runs)
 *   #cancel          cancel button (enabled while a job runs)
 *   #error           error box (hidden unless there is an error); shows error.message
 *   #job-status      text: queued (with its position) / running / done / cancelled / failed, with the job id
 *   #progress        <progress> 0-100; #progress-text the percentage
 *   #preview         <img> updated from `preview` events
 *   #result          <img> with the final PNG
 *   #seed-out        the seed of the result, exact (see parseJSON)
 *   #timings-out     the result's timings (JSON)
 * The body gets data-job-state = idle | running | complete | error | cancelled
 * so a test can wait for the end of a job.
 *
 * Event streams are read with fetch() and a ReadableStream, not EventSource:
 * EventSource cannot send an Authorization header, and a key in the URL
 * would end up in access logs. The reader follows the SSE format (event,
 * data, id, retry; comments; CRLF, LF or CR line ends) and, like
 * EventSource, reconnects after a dropped connection with Last-Event-ID.
 */
(function () {
  'use strict';

  var $ = function (id) { return document.getElementById(id); };
  var form = $('job-form');
  var op = $('operation');
  var canvas = $('mask-canvas');
  var ctx = canvas.getContext('2d');

  var job = null;          /* {id, source} while a job runs */
  var KEY_STORE = 'sdworker.apiKey';
  /* After this many reconnects in a row without an event, the job is lost. */
  var MAX_RECONNECTS = 10;
  var initImage = null;    /* {b64, img} of the chosen file */
  var mask = null;         /* offscreen canvas at the image's size */

  function setState(s) { document.body.setAttribute('data-job-state', s); }

  function showError(message) {
    var box = $('error');
    box.textContent = message;
    box.hidden = !message;
  }

  /* The API answers errors as {"error":{"code","message"}}; anything else
   * (a proxy page, a network failure) still gets a readable message. */
  function errorMessage(res, body) {
    if (body && body.error && body.error.message) return body.error.message;
    return 'HTTP ' + res.status + ' ' + (res.statusText || '');
  }

  /* Seeds are unsigned 64-bit integers and JSON.parse would round those
   * above 2^53 to the nearest double, so every "seed" member's number is
   * quoted in the text first and arrives as its exact decimal string. Only
   * members can match: inside a JSON string a quote is escaped, so
   * `"seed":` cannot appear there with a bare quote after the name. */
  function parseJSON(text) {
    return JSON.parse(text.replace(/("seed"\s*:\s*)(\d+)/g, '$1"$2"'));
  }

  /* ---- the API key ---- */

  function storage() {
    try { return window.localStorage; } catch (e) { return null; }
  }

  function apiKey() { return $('api-key').value.trim(); }

  /* headers plus Authorization when a key is set. */
  function withKey(headers) {
    var h = headers || {};
    if (apiKey()) h.Authorization = 'Bearer ' + apiKey();
    return h;
  }

  function keyChanged() {
    var st = storage();
    if (st) {
      if (apiKey()) st.setItem(KEY_STORE, apiKey());
      else st.removeItem(KEY_STORE);
    }
    loadModels();
  }

  function fetchJSON(url, options) {
    options = options || {};
    options.headers = withKey(options.headers);
    return fetch(url, options).then(function (res) {
      return res.text().then(function (text) {
        var body = null;
        try { body = text ? parseJSON(text) : null; } catch (e) { body = null; }
        return { res: res, body: body };
      });
    });
  }

  /* ---- readiness ---- */

  function pollReady() {
    var el = $('ready-status');
    fetchJSON('/ready').then(function (r) {
      if (r.res.ok && r.body && r.body.ready) {
        el.textContent = 'Ready';
        el.className = 'status status-ready';
        setTimeout(pollReady, 30000);
      } else {
        var why = r.body && (r.body.reason || (r.body.error && r.body.error.message));
        el.textContent = 'Not ready' + (why ? ': ' + why : '');
        el.className = 'status status-waiting';
        setTimeout(pollReady, 3000);
      }
    }, function () {
      el.textContent = 'Service unreachable';
      el.className = 'status status-down';
      setTimeout(pollReady, 3000);
    });
  }

  /* ---- models: {"models":[{"name":...,"default":bool,"family":...,"defaults":{...}}]};
   * plain strings tolerated ---- */

  var modelsTimer = null;
  var modelDefaults = {};
  var modelLoras = {};
  var defaultsShownFor = null;

  /* The picker lists only the LoRAs that fit the chosen model; a choice
   * survives a refresh of the list and a change of model where it fits. */
  function showLoras() {
    var box = $('loras');
    var kept = {};
    Array.prototype.forEach.call(box.querySelectorAll('.lora-use'), function (c) {
      kept[c.getAttribute('data-lora')] = { on: c.checked, w: c.parentNode.parentNode.querySelector('.lora-weight').value };
    });
    box.textContent = '';
    var names = modelLoras[$('model').value] || [];
    names.forEach(function (name) {
      var row = document.createElement('div');
      row.className = 'row';
      var label = document.createElement('label');
      var c = document.createElement('input');
      c.type = 'checkbox';
      c.className = 'lora-use';
      c.setAttribute('data-lora', name);
      c.checked = !!(kept[name] && kept[name].on);
      label.appendChild(c);
      label.appendChild(document.createTextNode(' ' + name));
      var w = document.createElement('input');
      w.type = 'number';
      w.className = 'lora-weight';
      w.min = '-4';
      w.max = '4';
      w.step = '0.05';
      w.value = kept[name] ? kept[name].w : '1';
      w.setAttribute('aria-label', name + ' weight');
      row.appendChild(label);
      row.appendChild(w);
      box.appendChild(row);
    });
    $('lora-fields').hidden = !names.length;
  }

  /* A model's own defaults (an SD-Turbo model's 1 step without guidance,
   * SD 2.1's 768x768) replace the form's values when it is chosen. */
  function applyModelDefaults() {
    var d = modelDefaults[$('model').value];
    if (!d) return;
    defaultsShownFor = $('model').value;
    if (d.steps) $('steps').value = d.steps;
    if (typeof d.guidance_scale === 'number') $('guidance').value = d.guidance_scale;
    if (d.width) $('width').value = d.width;
    if (d.height) $('height').value = d.height;
    $('sampler').value = d.sampler || '';
  }

  function loadModels() {
    var sel = $('model');
    clearTimeout(modelsTimer);
    fetchJSON('/v1/models').then(function (r) {
      var list = (r.body && (r.body.models || r.body.data)) || [];
      var chosen = sel.value;
      sel.textContent = '';
      modelDefaults = {};
      modelLoras = {};
      var pending = false;
      list.forEach(function (m) {
        var name = typeof m === 'string' ? m : (m.name || m.id);
        if (!name) return;
        var o = document.createElement('option');
        o.value = name;
        o.textContent = m.family ? name + ' (' + m.family + (m.inpainting ? ', inpainting' : '') + ')' : name;
        if (m.default) o.selected = true;
        if (m.defaults) modelDefaults[name] = m.defaults;
        if (m.loras) modelLoras[name] = m.loras;
        /* family is null until the engine has loaded the models */
        if (typeof m === 'object' && m.family === null) pending = true;
        sel.appendChild(o);
      });
      if (chosen && Array.prototype.some.call(sel.options, function (o) { return o.value === chosen; })) sel.value = chosen;
      if (defaultsShownFor !== sel.value) applyModelDefaults();
      showLoras();
      if (pending) modelsTimer = setTimeout(loadModels, 5000);
      if (!sel.options.length) {
        var o = document.createElement('option');
        o.value = '';
        o.textContent = r.res.ok ? '(no models)' : r.res.status === 401 ? '(enter an API key)' : '(unavailable)';
        sel.appendChild(o);
        /* A missing key is waited for in the key field, not by polling. */
        if (r.res.status !== 401) modelsTimer = setTimeout(loadModels, 5000);
      }
    }, function () { modelsTimer = setTimeout(loadModels, 5000); });
  }

  /* ---- operation-dependent fields ---- */

  function updateFields() {
    var v = op.value;
    var withImage = v !== 'image_generation';
    $('image-fields').hidden = !withImage;
    $('mask-fields').hidden = v !== 'image_inpaint';
    Array.prototype.forEach.call(document.querySelectorAll('.size-only'), function (el) {
      el.hidden = withImage;
    });
    $('generate').textContent = { image_generation: 'Generate', image_transform: 'Transform', image_inpaint: 'Inpaint' }[v];
  }

  /* ---- init image and mask ---- */

  function redraw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!initImage) return;
    ctx.drawImage(initImage.img, 0, 0, canvas.width, canvas.height);
    /* The mask's white areas shown as a translucent red overlay. */
    var tint = document.createElement('canvas');
    tint.width = canvas.width;
    tint.height = canvas.height;
    var t = tint.getContext('2d');
    t.drawImage(mask, 0, 0, canvas.width, canvas.height);
    var px = t.getImageData(0, 0, tint.width, tint.height);
    for (var i = 0; i < px.data.length; i += 4) {
      var white = px.data[i];
      px.data[i] = 255; px.data[i + 1] = 40; px.data[i + 2] = 40;
      px.data[i + 3] = white > 127 ? 140 : 0;
    }
    t.putImageData(px, 0, 0);
    ctx.drawImage(tint, 0, 0);
  }

  function clearMask() {
    if (!mask) return;
    var m = mask.getContext('2d');
    m.fillStyle = '#000';
    m.fillRect(0, 0, mask.width, mask.height);
    redraw();
  }

  function loadInitImage(file) {
    initImage = null;
    if (!file) { redraw(); return; }
    var reader = new FileReader();
    reader.onload = function () {
      var dataUrl = reader.result;
      var img = new Image();
      img.onload = function () {
        /* rbee's worker accepts bare base64 only; send it without the prefix. */
        initImage = { b64: dataUrl.slice(dataUrl.indexOf(',') + 1), img: img };
        mask = document.createElement('canvas');
        mask.width = img.naturalWidth;
        mask.height = img.naturalHeight;
        /* Display at most 512 px wide, in the image's aspect ratio. */
        var scale = Math.min(1, 512 / img.naturalWidth);
        canvas.width = Math.round(img.naturalWidth * scale);
        canvas.height = Math.round(img.naturalHeight * scale);
        clearMask();
      };
      img.onerror = function () { showError('The file is not an image the browser can read.'); };
      img.src = dataUrl;
    };
    reader.readAsDataURL(file);
  }

  var painting = false;
  function paint(ev) {
    if (!painting || !mask) return;
    var r = canvas.getBoundingClientRect();
    var x = (ev.clientX - r.left) * mask.width / r.width;
    var y = (ev.clientY - r.top) * mask.height / r.height;
    var radius = Number($('brush-size').value) / 2 * mask.width / r.width;
    var m = mask.getContext('2d');
    m.fillStyle = '#fff';
    m.beginPath();
    m.arc(x, y, radius, 0, 2 * Math.PI);
    m.fill();
    redraw();
  }

  /* The mask as a black/white PNG of the image's size, base64 without prefix. */
  function maskB64() {
    var url = mask.toDataURL('image/png');
    return url.slice(url.indexOf(',') + 1);
  }

  /* ---- jobs ---- */

  function setProgress(pct) {
    var p = Math.max(0, Math.min(100, Number(pct) || 0));
    $('progress').value = p;
    $('progress').textContent = p.toFixed(0) + '%';
    $('progress-text').textContent = p.toFixed(0) + '%';
  }

  function running(on) {
    $('generate').disabled = on;
    $('cancel').disabled = !on;
  }

  /* The previous job's images and figures, so that a cancelled or failed
   * job does not leave another job's result looking like its own. */
  function clearResult() {
    ['preview', 'result'].forEach(function (id) {
      $(id).hidden = true;
      $(id).removeAttribute('src');
    });
    $('seed-out').textContent = '–';
    $('timings-out').textContent = '';
  }

  function finish(state, text) {
    if (job && job.source) job.source.close();
    job = null;
    running(false);
    if (state === 'error' || state === 'cancelled') {
      clearResult();
      setProgress(0);
    }
    setState(state);
    $('job-status').textContent = text;
  }

  function buildRequest() {
    var v = op.value;
    var req = {
      operation: v,
      hive_id: 'localhost',
      model: $('model').value,
      prompt: $('prompt').value,
      steps: Number($('steps').value),
      guidance_scale: Number($('guidance').value)
    };
    var neg = $('negative-prompt').value;
    if (neg) req.negative_prompt = neg;
    var seed = $('seed').value.trim().replace(/^0+(?=[0-9])/, '');
    if (seed) {
      if (!/^[0-9]+$/.test(seed) || seed.length > 20 || (seed.length === 20 && seed > '18446744073709551615'))
        throw new Error('The seed must be a whole number from 0 to 18446744073709551615 (or blank for random).');
      /* As a decimal string, which the API accepts: a JS number would round
       * a seed above 2^53. */
      req.seed = seed;
    }
    if ($('sampler').value) req.sampler = $('sampler').value;
    var loras = [];
    Array.prototype.forEach.call($('loras').querySelectorAll('.lora-use'), function (c) {
      if (!c.checked) return;
      var w = Number(c.parentNode.parentNode.querySelector('.lora-weight').value);
      if (!(w >= -4 && w <= 4)) throw new Error('A LoRA weight must be a number from -4 to 4.');
      loras.push({ name: c.getAttribute('data-lora'), weight: w });
    });
    if (loras.length) req.loras = loras;
    if (v === 'image_generation') {
      req.width = Number($('width').value);
      req.height = Number($('height').value);
    } else {
      if (!initImage) throw new Error('Choose an init image first.');
      req.init_image = initImage.b64;
      req.strength = Number($('strength').value);
      if (v === 'image_inpaint') req.mask_image = maskB64();
    }
    return JSON.stringify(req);
  }

  function submit(ev) {
    ev.preventDefault();
    if (job) return;
    showError('');
    if (!$('prompt').value.trim()) { showError('Enter a prompt.'); $('prompt').focus(); return; }
    var body;
    try { body = buildRequest(); } catch (e) { showError(e.message); return; }
    running(true);
    setState('running');
    setProgress(0);
    $('preview').hidden = true;
    $('job-status').textContent = 'Submitting…';
    fetchJSON('/v1/jobs', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Accept': 'application/json' },
      body: body
    }).then(function (r) {
      if (!r.res.ok || !r.body || !r.body.job_id) {
        var msg = errorMessage(r.res, r.body);
        var retry = r.res.headers.get('Retry-After');
        if (retry) msg += ' (retry after ' + retry + ' s)';
        showError(msg);
        finish('error', 'Rejected');
        return;
      }
      follow(r.body.job_id, r.body.sse_url || '/v1/jobs/' + r.body.job_id + '/stream');
    }, function (e) {
      showError('Could not reach the service: ' + e.message);
      finish('error', 'Failed');
    });
  }

  /* ---- event streams ---- */

  /* Splits SSE text into events: onEvent({type, data, id}) for each. */
  function sseParser(onEvent, state) {
    var buf = '', type = '', data = '', hasData = false;
    function line(l) {
      if (l === '') {
        if (hasData) onEvent({ type: type || 'message', data: data, id: state.lastId });
        type = ''; data = ''; hasData = false;
        return;
      }
      if (l.charAt(0) === ':') return;
      var colon = l.indexOf(':');
      var field = colon < 0 ? l : l.slice(0, colon);
      var value = colon < 0 ? '' : l.slice(colon + 1);
      if (value.charAt(0) === ' ') value = value.slice(1);
      if (field === 'event') type = value;
      else if (field === 'data') { data = hasData ? data + '\n' + value : value; hasData = true; }
      else if (field === 'id') { if (value.indexOf('\0') < 0) state.lastId = value; }
      else if (field === 'retry') { if (/^[0-9]+$/.test(value)) state.retry = Number(value); }
    }
    function push(text) {
      buf += text;
      var re = /\r\n|\r|\n/g, start = 0, m;
      while ((m = re.exec(buf))) {
        /* A CR at the end may be the first half of a CRLF. */
        if (m[0] === '\r' && m.index === buf.length - 1) break;
        line(buf.slice(start, m.index));
        start = re.lastIndex;
      }
      buf = buf.slice(start);
    }
    /* At the end of a connection a held CR ends its line after all. */
    push.end = function () { if (buf.slice(-1) === '\r') push('\n'); };
    return push;
  }

  /* Reads url's events until close(); on: {event(ev), reconnecting(),
   * failed(message)}. A 4xx answer ends it (the job is unknown, expired,
   * or the key is wrong); a dropped connection or a 5xx is retried. */
  function openStream(url, on) {
    var st = { lastId: '', retry: 1000, closed: false, failures: 0, abort: null };
    function retry() {
      if (st.closed) return;
      if (++st.failures > MAX_RECONNECTS) {
        on.failed('The event stream was lost.');
        return;
      }
      on.reconnecting();
      setTimeout(connect, st.retry);
    }
    function connect() {
      if (st.closed) return;
      var ac = window.AbortController ? new AbortController() : null;
      st.abort = ac;
      var headers = withKey({ 'Accept': 'text/event-stream' });
      if (st.lastId) headers['Last-Event-ID'] = st.lastId;
      fetch(url, { headers: headers, cache: 'no-store', signal: ac ? ac.signal : undefined }).then(function (res) {
        if (!res.ok) {
          if (res.status < 500) {
            return res.text().then(function (text) {
              var body = null;
              try { body = JSON.parse(text); } catch (e) { body = null; }
              if (!st.closed) on.failed(errorMessage(res, body));
            });
          }
          return retry();
        }
        var reader = res.body.getReader();
        var decoder = new TextDecoder();
        var push = sseParser(function (ev) {
          st.failures = 0;
          if (!st.closed) on.event(ev);
        }, st);
        function pump() {
          return reader.read().then(function (r) {
            if (r.done) {
              push.end();
              return retry();
            }
            push(decoder.decode(r.value, { stream: true }));
            return st.closed ? reader.cancel() : pump();
          });
        }
        return pump();
      }).catch(function () { retry(); });
    }
    connect();
    return {
      close: function () {
        st.closed = true;
        if (st.abort) st.abort.abort();
      }
    };
  }

  function follow(id, url) {
    $('job-status').textContent = 'Queued: ' + id;
    function data(ev) {
      try { return parseJSON(ev.data); } catch (e) { return {}; }
    }
    var handlers = {
      /* Sent at once while the job waits, and again whenever it moves up. */
      queued: function (d) {
        $('job-status').textContent = 'Queued: position ' + d.position + ' (' + id + ')';
      },
      progress: function (d) {
        setProgress(d.percent);
        $('job-status').textContent = 'Running: step ' + d.step + ' of ' + d.total + ' (' + id + ')';
      },
      preview: function (d) {
        setProgress(d.percent);
        if (d.image) {
          $('preview').src = 'data:image/' + (d.format || 'png') + ';base64,' + d.image;
          $('preview').hidden = false;
        }
      },
      complete: function (d) {
        setProgress(100);
        $('result').src = 'data:image/' + (d.format || 'png') + ';base64,' + d.image;
        $('result').hidden = false;
        $('seed-out').textContent = d.seed !== undefined ? String(d.seed) : '–';
        $('timings-out').textContent = d.timings ? JSON.stringify(d.timings, null, 1) : '';
        finish('complete', 'Done: ' + id + (d.width ? ' (' + d.width + '×' + d.height + ')' : ''));
      },
      error: function (d) {
        if (d.code === 'cancelled') {
          finish('cancelled', 'Cancelled: ' + id);
        } else {
          showError(d.message || 'The job failed.');
          finish('error', 'Failed: ' + id);
        }
      }
    };
    var source = openStream(url, {
      event: function (ev) {
        /* Event names the page does not know (e.g. a queue position) are skipped. */
        if (handlers.hasOwnProperty(ev.type)) handlers[ev.type](data(ev));
      },
      reconnecting: function () { $('job-status').textContent = 'Reconnecting to ' + id + '…'; },
      failed: function (message) {
        showError(message);
        finish('error', 'Lost: ' + id);
      }
    });
    job = { id: id, source: source };
  }

  function cancel() {
    if (!job) return;
    var id = job.id;
    $('cancel').disabled = true;
    fetchJSON('/v1/jobs/' + encodeURIComponent(id), { method: 'DELETE' }).then(function (r) {
      if (r.res.ok) {
        finish('cancelled', 'Cancelled: ' + id);
      } else {
        showError(errorMessage(r.res, r.body));
        $('cancel').disabled = false;
      }
    }, function (e) {
      showError('Could not cancel: ' + e.message);
      $('cancel').disabled = false;
    });
  }

  /* ---- wiring ---- */

  var st = storage();
  if (st && st.getItem(KEY_STORE)) $('api-key').value = st.getItem(KEY_STORE);
  $('api-key').addEventListener('change', keyChanged);
  op.addEventListener('change', updateFields);
  $('model').addEventListener('change', function () { applyModelDefaults(); showLoras(); });
  form.addEventListener('submit', submit);
  $('cancel').addEventListener('click', cancel);
  $('init-image').addEventListener('change', function () { loadInitImage(this.files[0]); });
  $('mask-clear').addEventListener('click', clearMask);
  $('strength').addEventListener('input', function () { $('strength-out').textContent = this.value; });
  canvas.addEventListener('pointerdown', function (ev) {
    painting = true;
    canvas.setPointerCapture(ev.pointerId);
    paint(ev);
  });
  canvas.addEventListener('pointermove', paint);
  canvas.addEventListener('pointerup', function () { painting = false; });
  canvas.addEventListener('pointercancel', function () { painting = false; });

  setState('idle');
  updateFields();
  pollReady();
  loadModels();
})();
