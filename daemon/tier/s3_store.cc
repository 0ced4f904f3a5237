// S3 requests over libcurl: signing, hashing, XML answers, error mapping.
#include "daemon/tier/s3_store.h"

#include <curl/curl.h>
#include <fmt/format.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>
#include <mutex>

#include "absl/strings/ascii.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/base/time.h"
#include "daemon/tier/sigv4.h"

namespace ckptd::tier {
namespace {

// The binary digest (Content-MD5 is its base64).
std::string Digest(const EVP_MD* md, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), out, &n, md, nullptr);
  return std::string(reinterpret_cast<char*>(out), n);
}

std::string Base64(std::string_view bin) {
  std::string out(4 * ((bin.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bin.data()),
                                static_cast<int>(bin.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string Unquote(std::string s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  return s;
}

// One curl handle per thread, reset before each request (its connection
// cache survives the reset).
CURL* ThreadHandle() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  struct Owned {
    CURL* h = curl_easy_init();
    ~Owned() { curl_easy_cleanup(h); }
  };
  thread_local Owned handle;
  return handle.h;
}

// libxml2 documents, freed on scope exit.
using XmlDoc = std::unique_ptr<xmlDoc, decltype(&xmlFreeDoc)>;

XmlDoc ParseXml(const std::string& body) {
  return XmlDoc(xmlReadMemory(body.data(), static_cast<int>(body.size()), "s3.xml", nullptr,
                              XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING),
                &xmlFreeDoc);
}

bool Named(const xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, BAD_CAST name) == 0;
}

std::vector<xmlNode*> ChildrenNamed(xmlNode* parent, const char* name) {
  std::vector<xmlNode*> out;
  for (xmlNode* c = parent ? parent->children : nullptr; c; c = c->next) {
    if (Named(c, name)) out.push_back(c);
  }
  return out;
}

std::string Text(xmlNode* parent, const char* name) {
  for (xmlNode* c : ChildrenNamed(parent, name)) {
    xmlChar* t = xmlNodeGetContent(c);
    std::string s = t ? reinterpret_cast<const char*>(t) : "";
    xmlFree(t);
    return s;
  }
  return "";
}

size_t Append(char* p, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(p, size * n);
  return size * n;
}

struct HeaderSink {
  std::string etag;
  uint64_t content_length = 0;
};

size_t OnHeader(char* p, size_t size, size_t n, void* out) {
  auto* sink = static_cast<HeaderSink*>(out);
  std::string_view line(p, size * n);
  const size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    std::string name(line.substr(0, colon));
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' '))
      value.remove_suffix(1);
    if (name == "etag") sink->etag = Unquote(std::string(value));
    if (name == "content-length") sink->content_length = std::strtoull(value.data(), nullptr, 10);
  }
  return size * n;
}

absl::Status HttpError(const std::string& what, long status, const std::string& body) {
  std::string code, message;
  if (XmlDoc doc = ParseXml(body)) {
    xmlNode* root = xmlDocGetRootElement(doc.get());
    if (root && Named(root, "Error")) {
      code = Text(root, "Code");
      message = Text(root, "Message");
    }
  }
  const std::string text = StrCat(what, ": HTTP ", status, code.empty() ? "" : " ", code,
                                  message.empty() ? "" : ": ", message);
  if (status >= 500 || code == "SlowDown" || code == "RequestTimeout" || status == 429) {
    return absl::UnavailableError(text);
  }
  if (status == 403) return absl::PermissionDeniedError(text);
  if (status == 404) return absl::NotFoundError(text);
  return absl::FailedPreconditionError(text);
}

}  // namespace

std::string UriEncode(std::string_view s, bool keep_slash) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

S3Store::S3Store(S3Config config) : config_(std::move(config)) {
  while (!config_.endpoint.empty() && config_.endpoint.back() == '/') config_.endpoint.pop_back();
  // The Host header as curl sends it: the authority, without a default port.
  std::string_view authority = config_.endpoint;
  const bool https = authority.starts_with("https://");
  if (const size_t scheme = authority.find("://"); scheme != std::string_view::npos) {
    authority.remove_prefix(scheme + 3);
  }
  host_ = std::string(authority.substr(0, authority.find('/')));
  const std::string_view default_port = https ? ":443" : ":80";
  if (host_.ends_with(default_port)) host_.resize(host_.size() - default_port.size());
  unsigned_payload_ = https && !config_.sign_payload_always;
}

std::string S3Store::Path(const std::string& key) const {
  std::string path = StrCat("/", UriEncode(config_.bucket, false));
  if (!key.empty()) StrAppend(&path, "/", UriEncode(key, true));
  return path;
}

std::string S3Store::Url(const std::string& key, const std::string& query) const {
  std::string url = StrCat(config_.endpoint, Path(key));
  if (!query.empty()) StrAppend(&url, "?", query);
  return url;
}

absl::StatusOr<S3Store::Response> S3Store::Request(const char* method, const std::string& key,
                                                   const std::string& query, std::string_view body,
                                                   const std::vector<std::string>& headers,
                                                   std::string_view md5_raw, size_t expect_body) {
  CURL* h = ThreadHandle();
  if (h == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  curl_easy_reset(h);
  const std::string url = Url(key, query);
  const std::string what =
      StrCat(method, " ", key.empty() ? config_.bucket : key, query.empty() ? "" : "?", query);
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  if (!config_.ca_file.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, config_.ca_file.c_str());
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(config_.connect_timeout_s * 1e3));
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(config_.request_timeout_s * 1e3));
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME,
                   std::max(1L, static_cast<long>(std::lround(config_.stall_timeout_s))));
  const std::string_view m(method);
  if (m == "HEAD") {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (m != "GET") {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  // Signed here (sigv4.h): host, the payload's SHA-256 (UNSIGNED-PAYLOAD
  // over TLS, which protects the body, as AWS's SDKs do), the date, the
  // Content-MD5 and every header the request adds.
  const std::string payload_sha = unsigned_payload_ ? "UNSIGNED-PAYLOAD" : Sha256Hex(body);
  const std::string amz_date = AmzDate(NowSeconds());
  SigV4Request signing{
      .method = method,
      .canonical_uri = Path(key),
      .canonical_query = query,
      .headers = {{"host", host_}, {"x-amz-content-sha256", payload_sha}, {"x-amz-date", amz_date}},
      .payload_sha256_hex = payload_sha,
      .amz_date = amz_date};
  std::vector<std::string> sent = {StrCat("x-amz-content-sha256: ", payload_sha),
                                   StrCat("x-amz-date: ", amz_date),
                                   "Content-Type: application/octet-stream"};
  if (!body.empty() && (!unsigned_payload_ || !md5_raw.empty())) {
    const std::string md5 =
        Base64(md5_raw.empty() ? Digest(EVP_md5(), body) : std::string(md5_raw));
    signing.headers["content-md5"] = md5;
    sent.push_back(StrCat("Content-MD5: ", md5));
  }
  for (const std::string& extra : headers) {
    const size_t colon = extra.find(':');
    std::string name = extra.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    signing.headers[name] = std::string(absl::StripAsciiWhitespace(extra.substr(colon + 1)));
    sent.push_back(extra);
  }
  sent.push_back(StrCat("Authorization: ", SignV4(signing, {.access_key = config_.access_key,
                                                            .secret_key = config_.secret_key,
                                                            .region = config_.region})));
  curl_slist* list = nullptr;
  for (const std::string& line : sent) list = curl_slist_append(list, line.c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
  Response r;
  r.body.reserve(expect_body);  // a ranged GET's bytes land once, not regrown
  HeaderSink sink;
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &sink);
  const CURLcode rc = curl_easy_perform(h);
  curl_slist_free_all(list);
  if (rc == CURLE_OPERATION_TIMEDOUT) {
    return absl::UnavailableError(StrCat(
        what, ": ", curl_easy_strerror(rc), " (", config_.endpoint, " moved no byte for ",
        config_.stall_timeout_s, " s, or the request ran past ", config_.request_timeout_s, " s)"));
  }
  if (rc != CURLE_OK) {
    return absl::UnavailableError(
        StrCat(what, ": ", curl_easy_strerror(rc), " (", config_.endpoint, ")"));
  }
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
  r.etag = sink.etag;
  r.content_length = sink.content_length;
  if (r.status >= 300) return HttpError(what, r.status, r.body);
  return r;
}

absl::Status S3Store::CreateBucket() {
  auto r = Request("PUT", "", "", "");
  if (!r.ok() && r.status().message().find("BucketAlreadyOwnedByYou") != std::string_view::npos) {
    return absl::OkStatus();
  }
  return r.status();
}

namespace {

// The binary MD5 of a body from its hex form; "" when not given (Request
// computes it where Content-MD5 is sent: over http, or with sign_payload =
// "always"), or computed from the body when the hex is malformed.
std::string RawMd5(std::string_view body, std::string_view md5_hex) {
  if (md5_hex.empty()) return {};
  if (md5_hex.size() != 2 * 16) return Digest(EVP_md5(), body);
  std::string raw;
  for (size_t i = 0; i < md5_hex.size(); i += 2) {
    raw.push_back(static_cast<char>(std::stoi(std::string(md5_hex.substr(i, 2)), nullptr, 16)));
  }
  return raw;
}

}  // namespace

std::string S3Store::UrlOf(const std::string& key) const {
  return StrCat("s3://", config_.bucket, "/", key);
}

absl::StatusOr<std::string> S3Store::Put(const std::string& key, std::string_view body,
                                         Precondition pre, std::string_view md5_hex) {
  std::vector<std::string> headers;
  if (pre == Precondition::kIfAbsent) headers.push_back("If-None-Match: *");
  auto r = Request("PUT", key, "", body, headers, RawMd5(body, md5_hex));
  if (r.ok()) return r->etag;
  if (pre == Precondition::kIfAbsent &&
      r.status().message().find("HTTP 412") != std::string::npos) {
    return absl::AlreadyExistsError(r.status().message());
  }
  return r.status();
}

absl::StatusOr<std::string> S3Store::CreateMultipartUpload(const std::string& key) {
  auto r = Request("POST", key, "uploads=", "");
  if (!r.ok()) return r.status();
  XmlDoc doc = ParseXml(r->body);
  const std::string id = doc ? Text(xmlDocGetRootElement(doc.get()), "UploadId") : "";
  if (id.empty()) {
    return absl::FailedPreconditionError(
        StrCat("POST ", key, "?uploads: no UploadId in the answer"));
  }
  return id;
}

absl::StatusOr<std::string> S3Store::UploadPart(const std::string& key,
                                                const std::string& upload_id, int part_number,
                                                std::string_view body, std::string_view md5_hex) {
  auto r = Request("PUT", key,
                   StrCat("partNumber=", part_number, "&uploadId=", UriEncode(upload_id, false)),
                   body, {}, RawMd5(body, md5_hex));
  if (!r.ok()) return r.status();
  return r->etag;
}

absl::StatusOr<std::string> S3Store::UploadPartCopy(const std::string& key,
                                                    const std::string& upload_id, int part_number,
                                                    const std::string& source_key,
                                                    ByteRange range) {
  if (range.length == 0) {
    return absl::InvalidArgumentError(
        StrCat("copy part ", part_number, " of ", key, " from ", source_key, ": an empty range"));
  }
  auto r = Request(
      "PUT", key, StrCat("partNumber=", part_number, "&uploadId=", UriEncode(upload_id, false)), "",
      {StrCat("x-amz-copy-source: /", UriEncode(config_.bucket, false), "/",
              UriEncode(source_key, true)),
       StrCat("x-amz-copy-source-range: bytes=", range.offset, "-",
              range.offset + range.length - 1)});
  if (!r.ok()) return r.status();
  // S3 may answer 200 with an <Error> body when a copy fails late.
  XmlDoc doc = ParseXml(r->body);
  xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
  if (root && Named(root, "Error")) {
    return HttpError(StrCat("copy part ", part_number, " of ", key), 500, r->body);
  }
  std::string etag = root ? Unquote(Text(root, "ETag")) : "";
  if (etag.empty()) {
    return absl::FailedPreconditionError(StrCat("copy part ", part_number, " of ", key, " from ",
                                                source_key, ": no ETag in the answer"));
  }
  return etag;
}

absl::StatusOr<std::string> S3Store::CompleteMultipartUpload(
    const std::string& key, const std::string& upload_id, const std::vector<std::string>& etags) {
  std::string xml = "<CompleteMultipartUpload>";
  for (size_t i = 0; i < etags.size(); ++i) {
    StrAppend(&xml, "<Part><PartNumber>", i + 1, "</PartNumber><ETag>\"", etags[i],
              "\"</ETag></Part>");
  }
  xml += "</CompleteMultipartUpload>";
  auto r = Request("POST", key, StrCat("uploadId=", UriEncode(upload_id, false)), xml);
  if (!r.ok()) return r.status();
  // S3 may answer 200 with an <Error> body when completion fails late.
  XmlDoc doc = ParseXml(r->body);
  xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
  if (root && Named(root, "Error")) return HttpError(StrCat("complete ", key), 500, r->body);
  std::string etag = root ? Unquote(Text(root, "ETag")) : "";
  if (etag.empty()) etag = r->etag;
  if (etag.empty()) {
    // Ceph RGW 16 answers an empty <ETag>: ask the object itself.
    CKPTD_ASSIGN_OR_RETURN(std::optional<ObjectInfo> head, Head(key));
    if (!head) return absl::NotFoundError(StrCat("complete ", key, ": the object is not there"));
    etag = head->etag;
  }
  return etag;
}

absl::Status S3Store::AbortMultipartUpload(const std::string& key, const std::string& upload_id) {
  auto r = Request("DELETE", key, StrCat("uploadId=", UriEncode(upload_id, false)), "");
  if (absl::IsNotFound(r.status())) return absl::OkStatus();  // already gone
  return r.status();
}

absl::StatusOr<ListPage> S3Store::ListPageOf(const std::string& prefix, const std::string& token,
                                             int max_keys) {
  std::string query =
      token.empty() ? "" : StrCat("continuation-token=", UriEncode(token, false), "&");
  StrAppend(&query, "list-type=2&max-keys=", max_keys, "&prefix=", UriEncode(prefix, false));
  auto r = Request("GET", "", query, "");
  if (!r.ok()) return r.status();
  XmlDoc doc = ParseXml(r->body);
  xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
  if (root == nullptr) return absl::FailedPreconditionError("ListObjectsV2: unreadable answer");
  ListPage page;
  for (xmlNode* c : ChildrenNamed(root, "Contents")) {
    page.objects.push_back({.key = Text(c, "Key"),
                            .size = std::strtoull(Text(c, "Size").c_str(), nullptr, 10),
                            .etag = Unquote(Text(c, "ETag"))});
  }
  if (Text(root, "IsTruncated") == "true") page.next_token = Text(root, "NextContinuationToken");
  return page;
}

absl::StatusOr<std::vector<MultipartUpload>> S3Store::ListMultipartUploads(
    const std::string& prefix) {
  std::vector<MultipartUpload> out;
  std::string key_marker, id_marker;
  while (true) {
    std::string query;
    if (!key_marker.empty()) StrAppend(&query, "key-marker=", UriEncode(key_marker, false), "&");
    StrAppend(&query, "prefix=", UriEncode(prefix, false));
    if (!id_marker.empty()) StrAppend(&query, "&upload-id-marker=", UriEncode(id_marker, false));
    StrAppend(&query, "&uploads=");
    auto r = Request("GET", "", query, "");
    if (!r.ok()) return r.status();
    XmlDoc doc = ParseXml(r->body);
    xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
    if (root == nullptr) return absl::FailedPreconditionError("ListMultipartUploads: unreadable");
    for (xmlNode* u : ChildrenNamed(root, "Upload")) {
      out.push_back({.key = Text(u, "Key"), .upload_id = Text(u, "UploadId")});
    }
    if (Text(root, "IsTruncated") != "true") break;
    key_marker = Text(root, "NextKeyMarker");
    id_marker = Text(root, "NextUploadIdMarker");
    if (key_marker.empty()) break;
  }
  return out;
}

absl::Status S3Store::Delete(const std::vector<std::string>& keys) {
  for (size_t at = 0; at < keys.size(); at += 1000) {
    std::string xml = "<Delete><Quiet>true</Quiet>";
    for (size_t i = at; i < std::min(keys.size(), at + 1000); ++i) {
      StrAppend(&xml, "<Object><Key>", XmlEscape(keys[i]), "</Key></Object>");
    }
    xml += "</Delete>";
    auto r = Request("POST", "", "delete=", xml);
    if (!r.ok()) return r.status();
    XmlDoc doc = ParseXml(r->body);
    xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
    for (xmlNode* e : ChildrenNamed(root, "Error")) {
      if (Text(e, "Code") == "NoSuchKey") continue;
      return absl::FailedPreconditionError(
          StrCat("delete ", Text(e, "Key"), ": ", Text(e, "Code"), " ", Text(e, "Message")));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> S3Store::Get(const std::string& key, std::optional<ByteRange> range) {
  std::vector<std::string> headers;
  if (range) {
    if (range->length == 0) return std::string();
    headers.push_back(
        StrCat("Range: bytes=", range->offset, "-", range->offset + range->length - 1));
  }
  auto r = Request("GET", key, "", "", headers, {}, range ? range->length : 0);
  if (!r.ok()) return r.status();
  if (range && r->body.size() != range->length) {
    return absl::DataLossError(StrCat("GET ", key, " bytes ", range->offset, "+", range->length,
                                      ": got ", r->body.size(), " bytes"));
  }
  return std::move(r->body);
}

absl::StatusOr<std::optional<ObjectInfo>> S3Store::Head(const std::string& key) {
  auto r = Request("HEAD", key, "", "");
  if (absl::IsNotFound(r.status())) return std::optional<ObjectInfo>();
  if (!r.ok()) return r.status();
  return std::optional<ObjectInfo>(
      ObjectInfo{.key = key, .size = r->content_length, .etag = r->etag});
}

}  // namespace ckptd::tier
