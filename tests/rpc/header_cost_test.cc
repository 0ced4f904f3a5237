// What a save header really costs the daemon, measured on the heap
// (mallinfo2): the parsed request, the converted SaveParams and the planned
// checkpoint writer, for 100k tensors; the memory budget must charge at
// least that (and not wildly more).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <malloc.h>

#include "daemon/base/strings.h"
#include "daemon/env/env.h"
#include "daemon/rpc/requests.h"
#include "daemon/storage/checkpoint_writer.h"

namespace ckptd::rpc {
namespace {

size_t HeapInUse() { return mallinfo2().uordblks; }

TEST(HeaderCostTest, TheBudgetChargesAtLeastWhatAParsedHeaderCosts) {
  for (int tensors : {1000, 100000}) {
    v1::SaveRequest wire;
    {
      v1::SaveHeader* h = wire.mutable_header();
      h->set_run_id("r");
      h->set_step(1);
      for (int i = 0; i < tensors; ++i) {
        auto* t = h->add_tensors();
        t->set_name(StrCat("model.layers.", i, ".w"));
        t->set_type(v1::TENSOR_TYPE_F32);
        t->add_ne(4);
        t->add_ne(2);
      }
    }
    const std::string bytes = wire.SerializeAsString();
    malloc_trim(0);
    const size_t before = HeapInUse();
    size_t peak = 0;
    {
      v1::SaveRequest parsed;  // as gRPC hands it to the handler
      ASSERT_TRUE(parsed.ParseFromString(bytes));
      auto params = ParamsFrom(parsed.header(), scheduler::SaveKind::kSave,
                               RequestLimits{.max_tensors = 200000});
      ASSERT_TRUE(params.ok()) << params.status();
      storage::SavePlan plan;
      plan.step = 1;
      for (const auto& t : params->tensors) plan.tensors.push_back(t);
      auto writer =
          storage::CheckpointWriter::Plan(env::Env::Default(), "/nonexistent", std::move(plan));
      ASSERT_TRUE(writer.ok()) << writer.status();
      peak = HeapInUse() - before;
    }
    const uint64_t charged = SaveHeaderCharge(wire.header(), bytes.size());
    std::printf("%d tensors: %zu wire bytes, %zu bytes on the heap, %llu charged (%.2fx)\n",
                tensors, bytes.size(), peak, static_cast<unsigned long long>(charged),
                static_cast<double>(charged) / static_cast<double>(peak));
    EXPECT_GE(charged, peak) << tensors << " tensors";
    EXPECT_LE(charged, 3 * peak) << tensors << " tensors";
  }
}

}  // namespace
}  // namespace ckptd::rpc
