// The status page served at /: one self-contained HTML file (no external
// assets) that lists runs and, for the chosen run, its checkpoints, a chart
// of loss and size over steps and its lineage (base models, the runs it
// branched from or into, checkpoints, exports), updated live from the
// events stream.
#pragma once

#include <string_view>

namespace ckptd::http {

inline constexpr std::string_view kStatusPage = R"html(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>ckptd</title>
<link rel="icon" href="data:image/svg+xml,%3Csvg xmlns='http%3A%2F%2Fwww.w3.org%2F2000%2Fsvg' viewBox='0 0 16 16'%3E%3Crect width='16' height='16' rx='3' fill='%23141a26'/%3E%3Cpath d='M4 11.5h8M4 8.5h8M4 5.5h5' stroke='%232f6fec' stroke-width='1.8' stroke-linecap='round'/%3E%3C/svg%3E">
<style>
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--mute:#6b7385;--line:#e3e6ec;--acc:#2f6fec;--ok:#1f9d55;--warn:#c27c0e;--bad:#d64545}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:var(--bg);color:var(--ink)}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 16px;padding:14px 24px;background:#141a26;color:#fff}
header h1{margin:0;font-size:18px;letter-spacing:.5px}header span{color:#9aa4b8;font-size:13px}
main{padding:18px 24px;display:grid;gap:18px}
.runs{display:flex;flex-wrap:wrap;gap:12px}
.run{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px;min-width:210px;max-width:100%;cursor:pointer;overflow-wrap:anywhere}
.run.sel{border-color:var(--acc);box-shadow:0 0 0 2px #2f6fec33}
.run b{font-size:15px}.run .meta{color:var(--mute);font-size:12px;margin-top:4px}
.pill{display:inline-block;border-radius:999px;padding:1px 8px;font-size:11px;font-weight:600;margin-left:6px}
.open{background:#e3f4ea;color:var(--ok)}.idle{background:#eef0f4;color:var(--mute)}.finished{background:#e8eefc;color:var(--acc)}.err{background:#fbe9e9;color:var(--bad)}
.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;min-width:0}
.scroll{overflow-x:auto}.panel h2{overflow-wrap:anywhere}
.panel h2{margin:0 0 10px;font-size:15px}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);white-space:nowrap}
th{color:var(--mute);font-weight:600;font-size:12px}td.num{text-align:right}
tr.latest td{background:#f3f7ff}tr.fresh td{animation:hl 2s ease-out}@keyframes hl{from{background:#fff3c4}}
.keep{color:var(--ok)}.drop{color:var(--bad)}.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
#chart{display:block;width:100%;height:240px}.axis{stroke:#c9ced8}.grid{stroke:var(--line)}.lbl{fill:var(--mute);font-size:11px}.ttl{fill:var(--mute);font-size:11px;font-weight:600}

.legend{display:flex;flex-wrap:wrap;gap:4px 14px;color:var(--mute);font-size:12px;margin-bottom:6px}.legend span{white-space:nowrap}.legend i{display:inline-block;width:18px;height:3px;vertical-align:middle;margin-right:5px}
#live{font-size:12px;color:var(--mute)}#live.on::before{content:"\25CF ";color:var(--ok)}
.empty{color:var(--mute);padding:10px 0;white-space:normal!important}#note{color:var(--mute);padding:28px 4px;text-align:center}
#lineage{display:block;height:auto;min-height:60px}#lineage .edge{fill:none;stroke:#aab2c2;stroke-width:1.5}
#lineage .same{stroke:#aab2c2;stroke-width:1.2;stroke-dasharray:4 3}#lineage .node circle,#lineage .node rect{stroke:#fff;stroke-width:2}#lineage .ckpt circle{fill:var(--acc)}
#lineage .base circle{fill:#7b5cc4}#lineage .gone circle{fill:#c9ced8}#lineage .export rect{fill:var(--warn)}
#lineage .pinned circle{fill:var(--ok)}#lineage .latest circle,#lineage .latest rect{stroke:#141a26;stroke-width:2.5}
#lineage text{font-size:11px;fill:var(--ink)}#lineage text.lane{fill:var(--mute);font-weight:600}
@media (max-width:600px){header,main{padding-left:10px;padding-right:10px}main{gap:12px}.run{min-width:0;flex:1 1 100%}.panel{padding:12px 10px}}
</style></head><body>
<header><h1>ckptd</h1><span id="summary">loading…</span><span id="live"></span></header>
<main>
<section class="runs" id="runs"></section>
<section class="panel"><h2 id="title">Checkpoints</h2>
<div class="legend" id="legend"></div>
<svg id="chart" role="img" aria-label="metric and size over steps"></svg><div id="note" hidden></div></section>
<section class="panel" id="lpanel"><h2 id="ltitle">Lineage</h2>
<div class="legend"><span><i style="background:#7b5cc4"></i>base model</span><span><i style="background:#2f6fec"></i>checkpoint</span><span><i style="background:#1f9d55"></i>pinned</span><span><i style="background:#c27c0e"></i>export</span><span>★ latest</span></div>
<div class="scroll"><svg id="lineage"></svg></div></section>
<section class="panel scroll" id="tpanel"><table id="table"><thead><tr><th>step</th><th>time (UTC)</th><th class="num">size</th><th>uuid</th><th>metrics</th><th>pinned</th><th>latest</th><th>retention next</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
const $=s=>document.querySelector(s);let run=new URLSearchParams(location.search).get('run');let es=null;let known=new Set();let shown=[];
let T=new URLSearchParams(location.search).get('token')||sessionStorage.getItem('ckptd-token');
if(T){sessionStorage.setItem('ckptd-token',T);const u=new URL(location.href);if(u.searchParams.has('token')){u.searchParams.delete('token');history.replaceState(null,'',u)}}
const UNITS=['B','KiB','MiB','GiB','TiB'];
const fmtB=b=>{b=Number(b);let i=0;while(b>=1024&&i<4){b/=1024;i++}return b.toFixed(i?1:0)+' '+UNITS[i]};
const esc=s=>String(s).replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
async function get(p){const r=await fetch(p,T?{headers:{Authorization:'Bearer '+T}}:{});if(!r.ok){const e=new Error((await r.json()).error.message);e.status=r.status;throw e}return r.json()}
async function loadRuns(){const d=await get('/v1/runs');const runs=d.runs||[];
 $('#summary').textContent=runs.length+' run'+(runs.length==1?'':'s');
 // None asked for: the run most recently active (a save, an open) first.
 if(!run&&runs.length)run=runs.reduce((a,b)=>(b.last_active_utc||'')>(a.last_active_utc||'')?b:a).run_id;
 $('#runs').innerHTML=runs.map(r=>{const st=(r.state||'').replace('RUN_STATE_','').toLowerCase();
  return `<div class="run${r.run_id==run?' sel':''}" data-run="${esc(r.run_id)}"><b>${esc(r.run_id)}</b><span class="pill ${st}" title="${esc(STATES[st]||'')}">${st}</span>${r.write_error?'<span class="pill err">write error</span>':''}
  <div class="meta">last step ${r.last_step??'—'} · ${r.checkpoint_count||0} checkpoint${r.checkpoint_count==1?'':'s'} · ${fmtB(r.total_bytes||0)}</div>${r.memory_step!=null||r.last_seen_step!=null?`<div class="meta tiers" title="the newest step each tier holds, and the step the trainer reached">memory ${r.memory_step??'—'} · disk ${r.last_step??'—'} · trainer at ${r.last_seen_step??'—'}</div>`:''}</div>`}).join('')||'<div class="empty">No runs yet: a trainer that opens a run (or <span class="mono">ckptctl import</span>) makes one appear here.</div>';
 document.querySelectorAll('.run').forEach(e=>e.onclick=()=>{run=e.dataset.run;history.replaceState(null,'','?run='+encodeURIComponent(run));known.clear();loadRuns();show()});return runs}
const STATES={open:'a trainer is using it',idle:'nobody is using it: not opened since the daemon started, or its trainer went away without closing it',finished:'closed'};
// A run's page: its checkpoints, chart and lineage, then live events. An
// unknown run says so (and opens no event stream).
async function show(){if(es){es.close();es=null}$('#live').className='';$('#live').textContent='';
 if(!run){$('#title').textContent='Checkpoints';message('No run to show yet.');return}
 if(await loadRun())watch()}
function message(text){shown=[];$('#tpanel').hidden=true;$('#table tbody').innerHTML=`<tr><td colspan="8" class="empty">${esc(text)}</td></tr>`;drawLineage([]);$('#chart').dataset.note=text;draw([])}
async function loadRun(){$('#title').textContent='Checkpoints of '+run;let all=[],tok='';
 try{do{const d=await get(`/v1/runs/${encodeURIComponent(run)}/checkpoints?page_size=1000${tok?'&page_token='+tok:''}`);all=all.concat(d.checkpoints||[]);tok=d.next_page_token||''}while(tok)}
 catch(e){if(e.status!=404)throw e;$('#title').textContent='Unknown run';message(`This daemon has no run named “${run}”. Pick one above.`);return false}
 const fresh=new Set(all.map(c=>c.step).filter(s=>known.size&&!known.has(s)));known=new Set(all.map(c=>c.step));
 $('#table tbody').innerHTML=all.slice().reverse().map(c=>`<tr data-step="${c.step}" class="${c.is_latest?'latest':''}${fresh.has(c.step)?' fresh':''}"><td>${c.step}</td><td>${esc(c.time_utc||'')}</td><td class="num">${fmtB(Number(c.size_bytes||0)+Number(c.train_size_bytes||0))}</td>
 <td class="mono">${esc((c.uuid||'').slice(0,8))}</td><td>${Object.entries(c.metrics||{}).sort().map(([k,v])=>`<span title="${esc(k)}=${Number(v)}">${esc(k)}=${Number(v).toPrecision(4)}</span>`).join(' ')}</td>
 <td>${c.pinned?'<span class="pill finished">pinned</span> '+esc(c.pin_reason):''}</td><td>${c.is_latest?'★':''}</td><td class="${c.retention_keeps?'keep':'drop'}">${c.retention_keeps?'keep':'delete'}: ${esc(c.retention_reason||'')}</td></tr>`).join('')||'<tr><td colspan="8" class="empty">No checkpoints yet.</td></tr>';
 $('#tpanel').hidden=!all.length;$('#chart').dataset.note=all.length?'':'No checkpoints yet: the first save of this run will appear here as it lands.';
 shown=all;draw(all);if(all.length)lineage();else drawLineage([]);return true}
async function lineage(){const d=await get(`/v1/runs/${encodeURIComponent(run)}/lineage`).catch(()=>({nodes:[]}));drawLineage(d.nodes||[])}
// Lanes: base models on the left, one row per run; a run starts right of
// the checkpoint it branched from; exports hang under their checkpoint.
function drawLineage(ns){const s=$('#lineage');$('#lpanel').hidden=!ns.length;if(!ns.length){s.innerHTML='';return}
 // Nodes are files (id), not contents (uuid): equal uuids are dashed "same content" links.
 const kind=n=>(n.kind||'').replace('KIND_','').toLowerCase(),key=n=>n.id,pkey=n=>n.parent_id;
 const by=new Map(ns.map(n=>[key(n),n])),pos=new Map(),lanes=[],laneOf=new Map();
 const runs=[...new Set(ns.filter(n=>n.run_id).map(n=>n.run_id))],bases=ns.filter(n=>kind(n)=='base_model');
 bases.forEach((b,i)=>pos.set(key(b),{x:0,y:i}));let row=bases.length?1:0;
 const steps=r=>ns.filter(n=>n.run_id==r&&(kind(n)=='checkpoint'||kind(n)=='gone'));
 const place=r=>{if(laneOf.has(r))return;laneOf.set(r,-1);const cs=steps(r);const first=cs[0],p=first&&by.get(pkey(first));
  if(p&&p.run_id&&p.run_id!=r)place(p.run_id);const px=p&&pos.has(key(p))?pos.get(key(p)).x:0;
  laneOf.set(r,row);lanes.push([r,row]);cs.forEach((c,i)=>pos.set(key(c),{x:px+1+i,y:row}));
  const ex=ns.filter(n=>kind(n)=='export'&&n.run_id==r);row+=1+(ex.length?1:0)};
 runs.forEach(place);
 // Exports in a row under their checkpoint; an adapter (whose parent is its
 // base export) after the exports it hangs off.
 const anchor=e=>{let p=by.get(pkey(e));while(p&&kind(p)=='export')p=by.get(pkey(p));return p};
 const onExport=e=>kind(by.get(pkey(e))||{})=='export';
 const leaf=new Map();ns.filter(n=>kind(n)=='export').sort((a,b)=>onExport(a)-onExport(b)).forEach(e=>{const c=anchor(e),p=c&&pos.get(key(c));if(!p)return;const k=leaf.get(key(c))||0;leaf.set(key(c),k+1);pos.set(key(e),{x:p.x+k*0.22,y:p.y+0.75})});
 // Drawn at its pixel size (text never scales); wider than the panel, it scrolls.
 const maxX=Math.max(1,...[...pos.values()].map(p=>p.x)),W=Math.max(s.parentNode.clientWidth||900,150+(maxX+1)*56),DX=Math.min(90,(W-150)/(maxX+1)),DY=46,X=x=>120+x*DX,Y=y=>24+y*DY,H=Y(row)-DY+30;
 s.setAttribute('viewBox',`0 0 ${W} ${H}`);s.style.width=W+'px';s.style.height=H+'px';let out='';
 for(const [r,y] of lanes)out+=`<text class="lane" x="4" y="${Y(y)+4}">${esc(r.length>16?r.slice(0,15)+'…':r)}<title>${esc(r)}</title></text>`;
 for(const n of ns){const a=pos.get(pkey(n)),b=pos.get(key(n));if(!a||!b||!n.parent_id)continue;const mx=(X(a.x)+X(b.x))/2;
  out+=`<path class="edge" d="M${X(a.x)},${Y(a.y)} C${mx},${Y(a.y)} ${mx},${Y(b.y)} ${X(b.x)},${Y(b.y)}"/>`}
 for(const n of ns)for(const o of n.same_content||[]){const a=pos.get(key(n)),b=pos.get(o);if(!a||!b||!(n.id<o))continue;
  out+=`<line class="same" data-a="${esc(n.id)}" data-b="${esc(o)}" x1="${X(a.x)}" y1="${Y(a.y)}" x2="${X(b.x)}" y2="${Y(b.y)}"><title>same content</title></line>`}
 for(const n of ns){const p=pos.get(key(n));if(!p)continue;const k=kind(n),cls=`node ${k=='base_model'?'base':k=='checkpoint'?'ckpt':k}${n.pinned?' pinned':''}${n.is_latest?' latest':''}`;
  const tip=`${k.replace('_',' ')} ${n.uuid}${n.run_id?'\n'+n.run_id+' step '+(n.step||0):''}${n.name?'\n'+n.name:''}${n.file?'\n'+n.file:''}${(n.same_content||[]).length?'\nsame content as '+n.same_content.join(', '):''}`;
  const label=k=='export'?esc(n.name)+(n.is_latest?' ★':''):k=='base_model'?'base '+esc(n.uuid.slice(0,8)):k=='gone'?'deleted':String(n.step||0)+(n.is_latest?' ★':'');
  const shape=k=='export'?`<rect x="${X(p.x)-5}" y="${Y(p.y)-5}" width="10" height="10" rx="2"/>`:`<circle cx="${X(p.x)}" cy="${Y(p.y)}" r="${k=='base_model'?8:6}"/>`;
  out+=`<g class="${cls}" data-id="${esc(n.id)}" data-uuid="${esc(n.uuid)}" data-kind="${k}">${shape}<title>${esc(tip)}</title><text x="${X(p.x)+(k=='export'?8:0)}" y="${Y(p.y)+(k=='export'?4:-10)}" text-anchor="${k=='export'?'start':'middle'}">${label}</text></g>`}
 s.innerHTML=out;
 // Opened (once per run shown) scrolled to the run's latest checkpoint.
 const l=ns.find(n=>n.is_latest&&kind(n)=='checkpoint'&&n.run_id==run),lp=l&&pos.get(key(l));
 if(lp&&scrolledFor!==run){const w=s.parentNode;w.scrollLeft=Math.max(0,X(lp.x)-w.clientWidth/2);scrolledFor=run}}
let scrolledFor=null;
// Round tick values: about n of them covering [lo, hi], from 1/2/5 × 10^k.
function ticks(lo,hi,n,integer){if(!(hi>lo)){const d=lo==0?1:Math.abs(lo)/2;lo-=d;hi+=d}
 let step=(hi-lo)/n;const mag=10**Math.floor(Math.log10(step)),f=step/mag;step=(f<=1?1:f<=2?2:f<=5?5:10)*mag;if(integer)step=Math.max(1,Math.round(step));
 const a=Math.floor(lo/step+1e-9)*step,b=Math.ceil(hi/step-1e-9)*step,out=[];for(let v=a;v<=b+step/2;v+=step)out.push(Number(v.toPrecision(12)));return{lo:a,hi:b,ts:out}}
const short=v=>{const a=Math.abs(v);return a>=1e6&&a<1e15?Number((v/1e6).toPrecision(4))+'M':a>=1e4?Number((v/1e3).toPrecision(4))+'k':String(Number(v.toPrecision(4)))};
// Steps across; the metric (loss, else the first one) on the left axis,
// size on the right from zero in the unit that fits. Drawn at the SVG's
// pixel size, so text is never stretched; one point is a dot, a flat
// series a level line.
function draw(cs){const s=$('#chart');s.style.display=cs.length?'':'none';$('#legend').hidden=!cs.length;$('#note').hidden=!!cs.length;$('#note').textContent=s.dataset.note||'';
 if(!cs.length)return;const W=Math.max(280,s.clientWidth||900),H=240,L=58,R=66,TP=14,B=38,pw=W-L-R,ph=H-TP-B;
 s.setAttribute('viewBox',`0 0 ${W} ${H}`);
 const names=[...new Set(cs.flatMap(c=>Object.keys(c.metrics||{})))].sort(),m=names.includes('loss')?'loss':names[0];
 $('#legend').innerHTML=(m?`<span><i style="background:#2f6fec"></i>${esc(m)} (left)</span>`:'')+`<span><i style="background:#c27c0e"></i>size (right)</span>`;
 const xs=cs.map(c=>Number(c.step)),x0=Math.min(...xs),x1=Math.max(...xs),xt=x0==x1?{lo:x0-1,hi:x0+1,ts:[x0]}:{lo:x0,hi:x1,ts:ticks(x0,x1,Math.max(2,Math.floor(pw/80)),true).ts.filter(v=>v>=x0&&v<=x1)};
 if(x0!=x1&&xt.ts.length<2)xt.ts=[x0,x1];
 const X=v=>L+pw*(v-xt.lo)/(xt.hi-xt.lo);let out='';
 for(const v of xt.ts)out+=`<line class="grid" x1="${X(v)}" y1="${TP}" x2="${X(v)}" y2="${TP+ph}"/><text class="lbl" x="${X(v)}" y="${TP+ph+15}" text-anchor="middle">${short(v)}</text>`;
 out+=`<text class="ttl" x="${L+pw/2}" y="${H-4}" text-anchor="middle">step</text>`;
 const series=(vals,color,axis)=>{const pts=cs.map((c,i)=>[X(xs[i]),vals[i]]).filter(p=>p[1]!=null&&isFinite(p[1]));if(!pts.length)return'';
  const Y=v=>TP+ph-ph*(v-axis.lo)/(axis.hi-axis.lo);
  return(pts.length>1?`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map(p=>p[0]+','+Y(p[1])).join(' ')}"/>`:'')+pts.map(p=>`<circle cx="${p[0]}" cy="${Y(p[1])}" r="3" fill="${color}"/>`).join('')};
 const sizes=cs.map(c=>Number(c.size_bytes||0)+Number(c.train_size_bytes||0)),top=Math.max(...sizes);let u=0;while(u<4&&top>=1024**(u+1))u++;
 const sv=sizes.map(b=>b/1024**u),st=ticks(0,Math.max(...sv),4,false);
 for(const v of st.ts){const y=TP+ph-ph*(v-st.lo)/(st.hi-st.lo);out+=`<line class="grid" x1="${L}" y1="${y}" x2="${L+pw}" y2="${y}"/><text class="lbl" x="${L+pw+6}" y="${y+4}" fill="#c27c0e">${short(v)}</text>`}
 out+=`<text class="ttl" text-anchor="middle" transform="translate(${W-14} ${TP+ph/2}) rotate(90)">size (${UNITS[u]})</text>`;
 let mv=[];if(m){mv=cs.map(c=>c.metrics&&c.metrics[m]!=null?Number(c.metrics[m]):null);const f=mv.filter(v=>v!=null&&isFinite(v));
  if(f.length){const mt=ticks(Math.min(...f),Math.max(...f),4,false);
   for(const v of mt.ts){const y=TP+ph-ph*(v-mt.lo)/(mt.hi-mt.lo);out+=`<text class="lbl" x="${L-6}" y="${y+4}" text-anchor="end" fill="#2f6fec">${short(v)}</text>`}
   out+=`<text class="ttl" text-anchor="middle" transform="translate(14 ${TP+ph/2}) rotate(-90)">${esc(m.length>24?m.slice(0,23)+'…':m)}</text>`;
   out+=series(sv,'#c27c0e',st)+series(mv,'#2f6fec',mt)}else out+=series(sv,'#c27c0e',st)}else out+=series(sv,'#c27c0e',st);
 out+=`<line class="axis" x1="${L}" y1="${TP+ph}" x2="${L+pw}" y2="${TP+ph}"/><line class="axis" x1="${L}" y1="${TP}" x2="${L}" y2="${TP+ph}"/><line class="axis" x1="${L+pw}" y1="${TP}" x2="${L+pw}" y2="${TP+ph}"/>`;
 s.innerHTML=out}
function watch(){if(es)es.close();if(!run)return;es=new EventSource(`/v1/runs/${encodeURIComponent(run)}/events`+(T?'?token='+encodeURIComponent(T):''));
 es.onopen=()=>{$('#live').className='on';$('#live').textContent='live'};es.onerror=()=>{$('#live').className='';$('#live').textContent='reconnecting…'};
 for(const t of['committed','deleted','failed','gap'])es.addEventListener(t,()=>{loadRun();loadRuns()})}
let resized=null;addEventListener('resize',()=>{clearTimeout(resized);resized=setTimeout(()=>{draw(shown);if(run&&shown.length)lineage()},100)});
loadRuns().then(show).catch(e=>$('#summary').textContent='error: '+e.message);setInterval(()=>loadRuns().catch(()=>{}),10000);
</script></body></html>
)html";

}  // namespace ckptd::http
