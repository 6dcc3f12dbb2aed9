// MetaStore: keyed records in the meta family.
#include "buffer/detail/rocks_store.h"

namespace sidetrace::buffer::detail {

Status RocksStore::meta_put(std::string_view key, std::string_view value) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  rocksdb::WriteBatch b;
  b.Put(cfs_[kMeta], key, value);
  return from_rocks(write(wo_derived_, &b), "meta_put");
}

Status RocksStore::meta_get(std::string_view key, std::string* value) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  return from_rocks(db_->Get(rocksdb::ReadOptions(), cfs_[kMeta], key, value), "meta_get");
}

Status RocksStore::meta_delete(std::string_view key) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  rocksdb::WriteBatch b;
  b.Delete(cfs_[kMeta], key);
  return from_rocks(write(wo_derived_, &b), "meta_delete");
}

Status RocksStore::meta_scan(std::string_view prefix, size_t limit,
                             std::vector<std::pair<std::string, std::string>>* out) {
  return meta_scan_after(prefix, {}, limit, out);
}

Status RocksStore::meta_scan_after(std::string_view prefix, std::string_view after, size_t limit,
                                   std::vector<std::pair<std::string, std::string>>* out) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kMeta]));
  if (after.empty() || after < prefix) {
    it->Seek(prefix);
  } else {
    it->Seek(after);
    if (it->Valid() && it->key() == after) it->Next();
  }
  size_t n = 0;
  for (; it->Valid() && n < limit && it->key().starts_with(prefix); it->Next()) {
    out->emplace_back(it->key().ToString(), it->value().ToString());
    ++n;
  }
  return from_rocks(it->status(), "meta_scan");
}

Status RocksStore::meta_write(const MetaWrite& w) {
  StoreLock db_lock(db_mu_);
  if (!db_) return unavailable();
  rocksdb::WriteBatch b;
  for (const auto& [k, v] : w.put)
    b.Put(cfs_[kMeta], k, v);
  for (const auto& k : w.del)
    b.Delete(cfs_[kMeta], k);
  return from_rocks(write(wo_derived_, &b), "meta_write");
}

}  // namespace sidetrace::buffer::detail
