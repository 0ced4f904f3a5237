// ckptctl export: plan, stream the source's tensors through the export
// writer (checking their digests on the way), rename into place.
#include "client/cli/export_command.h"

#include <cstdio>
#include <iostream>

#include "client/cli/commands.h"
#include "daemon/base/status.h"
#include "daemon/base/strings.h"
#include "daemon/env/env.h"
#include "daemon/export/plan.h"
#include "daemon/gguf/reader.h"
#include "daemon/storage/export_writer.h"
#include "daemon/storage/file_names.h"
#include "daemon/storage/merge.h"

namespace ckptd::cli {
namespace {

constexpr size_t kChunk = 8 << 20;

absl::Status ExportFile(const ExportArgs& a, const std::string& source);

// A multi-rank step's first part: its parts merged (slices joined) into a
// temporary file beside the output, exported, then removed.
absl::Status Export(const ExportArgs& a) {
  const size_t slash = a.file.rfind('/');
  const auto part =
      storage::ParseSplitFileName(slash == std::string::npos ? a.file : a.file.substr(slash + 1));
  if (!part || part->world_size < 2) return ExportFile(a, a.file);
  env::Env* env = env::Env::Default();
  const size_t out_slash = a.out.rfind('/');
  const std::string merged =
      out_slash == std::string::npos
          ? env::TempName(a.out)
          : StrCat(a.out.substr(0, out_slash + 1), env::TempName(a.out.substr(out_slash + 1)));
  auto result = storage::MergeParts(env, a.file, merged);
  if (!result.ok()) return result.status();
  std::cout << "merged " << result->world_size << " parts (" << result->sliced_tensors
            << " tensors joined from slices)\n";
  absl::Status st = ExportFile(a, merged);
  (void)env->RemoveFile(merged);
  return st;
}

absl::Status ExportFile(const ExportArgs& a, const std::string& source) {
  env::Env* env = env::Env::Default();
  CKPTD_ASSIGN_OR_RETURN(exports::Profile profile, exports::LoadProfile(env, a.profile));
  CKPTD_ASSIGN_OR_RETURN(auto file, env->OpenForRead(source));
  CKPTD_ASSIGN_OR_RETURN(gguf::GgufFile src, gguf::ReadHeader(*file));
  std::vector<gguf::TensorSpec> specs;
  for (const auto& t : src.tensors) specs.push_back({t.name, t.type, t.ne});
  CKPTD_ASSIGN_OR_RETURN(exports::ExportPlan plan,
                         exports::PlanExport(profile, a.name, specs, src.metadata, CKPTD_VERSION));
  auto shared = std::make_shared<const exports::ExportPlan>(std::move(plan));
  gguf::PlanOptions options{.alignment = src.alignment};
  if (const gguf::Value* scheme = src.metadata.Find(gguf::kKeyUuidScheme);
      scheme && scheme->get_if<std::string>() &&
      *scheme->get_if<std::string>() == gguf::kGgufHashScheme) {
    options.uuid_scheme = gguf::UuidScheme::kGgufHash;
  }
  CKPTD_ASSIGN_OR_RETURN(auto writer, storage::ExportWriter::Plan(shared, specs, options));
  std::string dir = ".", name = a.out;
  if (size_t slash = a.out.rfind('/'); slash != std::string::npos) {
    dir = slash == 0 ? "/" : a.out.substr(0, slash);
    name = a.out.substr(slash + 1);
  }
  CKPTD_TRY(writer->Start(env, dir, name, env::DirectIo::kAuto));
  // The source's bytes are checked against its own digests as they pass.
  CKPTD_ASSIGN_OR_RETURN(const std::vector<gguf::Digest128> stored, gguf::StoredTensorDigests(src));
  std::string buf;
  gguf::ContentDigestBuilder content;  // the source's content uuid, when it records none
  for (size_t i = 0; i < src.tensors.size(); ++i) {
    const gguf::TensorInfo& t = src.tensors[i];
    gguf::TensorHasher hasher;
    for (uint64_t done = 0; done < t.nbytes || t.nbytes == 0;) {
      size_t n = std::min<uint64_t>(kChunk, t.nbytes - done);
      buf.resize(n);
      CKPTD_TRY(file->ReadAt(src.data_offset + t.offset + done, n, buf.data()));
      hasher.Update(buf.data(), n);
      done += n;
      CKPTD_TRY(writer->Feed(i, buf, done == t.nbytes));
      if (t.nbytes == 0) break;
    }
    const gguf::Digest128 digest = hasher.Finish();
    if (!stored.empty() && !(digest == stored[i])) {
      return absl::DataLossError(StrCat("tensor '", t.name, "' of ", a.file,
                                        " does not match its recorded digest; nothing written"));
    }
    content.AddTensor(t.name, t.type, t.ne, t.nbytes, digest);
  }
  // The source as the export's parent: its general.uuid, or for a file
  // ckptd did not write, the content uuid ckptd gives those tensors (the
  // uuid `ckptctl import` gives the checkpoint it makes of them).
  std::string source_uuid;
  if (const gguf::Value* u = src.metadata.Find(gguf::kKeyUuid); u && u->get_if<std::string>()) {
    source_uuid = *u->get_if<std::string>();
  }
  std::string computed;
  if (source_uuid.empty()) {
    source_uuid = gguf::UuidFromDigest(content.Finish());
    computed = " (its content uuid: the file records none)";
  } else if (source_uuid.size() != 36) {
    return absl::InvalidArgumentError(
        StrCat(a.file, ": general.uuid '", source_uuid, "' is not a uuid; nothing written"));
  }
  CKPTD_TRY(writer->Finish(source_uuid));
  CKPTD_TRY(env->RenameFile(writer->written().temp_path, a.out));
  writer->Release();
  CKPTD_TRY(env->SyncDir(dir));
  std::cout << "wrote " << a.out << " (" << writer->layout().tensors.size() << " tensors, "
            << writer->written().bytes << " bytes, profile " << shared->profile << " "
            << shared->profile_digest << ", uuid " << writer->written().digest.uuid << ", source "
            << source_uuid << computed << ")\n";
  return absl::OkStatus();
}

}  // namespace

CLI::App* AddExportCommand(CLI::App* app, ExportArgs* a) {
  auto* cmd = app->add_subcommand(
      "export",
      "Apply an export profile to a GGUF checkpoint (offline, same result as at save time)");
  cmd->add_option("FILE", a->file,
                  "step_N.gguf written by ckptd, or a multi-rank step's first part (merged first)");
  cmd->add_option("--profile", a->profile, "Built-in profile name or a profile .toml");
  cmd->add_option("-o,--out", a->out, "Output file");
  cmd->add_option("--name", a->name, "Export name recorded in the file (default: the profile's)");
  cmd->add_flag("--list-profiles", a->list, "List the built-in profiles");
  cmd->add_option("--show-profile", a->show, "Print a profile as TOML");
  return cmd;
}

int RunExport(const ExportArgs& a) {
  if (a.list) {
    for (const std::string& name : exports::BuiltinProfileNames()) {
      auto spec = exports::BuiltinProfile(name);
      std::cout << name << "\t" << spec->description << "\n";
    }
    return kExitOk;
  }
  if (!a.show.empty()) {
    auto profile = exports::LoadProfile(env::Env::Default(), a.show);
    if (!profile.ok()) {
      std::fprintf(stderr, "ckptctl: %s\n", std::string(profile.status().message()).c_str());
      return kExitFailed;
    }
    std::cout << "# digest " << profile->digest << "\n" << exports::CanonicalText(profile->spec);
    return kExitOk;
  }
  if (a.file.empty() || a.profile.empty() || a.out.empty()) {
    std::fprintf(stderr, "ckptctl export: give FILE, --profile and -o (or --list-profiles)\n");
    return kExitUsage;
  }
  if (absl::Status st = Export(a); !st.ok()) {
    std::fprintf(stderr, "ckptctl export: %s\n", std::string(st.message()).c_str());
    return kExitFailed;
  }
  return kExitOk;
}

}  // namespace ckptd::cli
