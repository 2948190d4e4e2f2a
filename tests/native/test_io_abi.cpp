// The file-IO C ABI with bad arguments: every entry point returns
// INVALID_ARGUMENT with a message naming the argument, leaves out-params
// untouched, and every _free accepts NULL.
#include "io_test_util.hpp"

using namespace iotest;

TEST(IoAbi, NullAndOutOfRangeArgumentsAreErrors) {
    qlora_safetensors_free(nullptr);
    qlora_safetensors_writer_free(nullptr);
    qlora_llama2c_model_free(nullptr);
    qlora_llama2c_tokenizer_free(nullptr);

    const qlora_safetensors_params p = qlora_safetensors_default_params();
    qlora_safetensors_t f = reinterpret_cast<qlora_safetensors_t>(0x1);
    const auto * sentinel = f;
    EXPECT_TRUE(failed_with(qlora_safetensors_open("x", &p, nullptr), QLORA_ERROR_INVALID_ARGUMENT, {"out must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_open_index(nullptr, &p, &f), QLORA_ERROR_INVALID_ARGUMENT,
                            {"qlora_safetensors_open_index: index_path must not be NULL"}));
    EXPECT_EQ(f, sentinel);
    int64_t n = 42;
    EXPECT_TRUE(failed_with(qlora_safetensors_count(nullptr, &n), QLORA_ERROR_INVALID_ARGUMENT, {"file must not be NULL"}));
    EXPECT_EQ(n, 42);
    EXPECT_TRUE(failed_with(qlora_safetensors_prefetch(nullptr, 0), QLORA_ERROR_INVALID_ARGUMENT, {"file must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_release(nullptr, 0), QLORA_ERROR_INVALID_ARGUMENT, {"file must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_metadata_count(nullptr, &n), QLORA_ERROR_INVALID_ARGUMENT, {"file must not be NULL"}));
    const char * v = nullptr;
    EXPECT_TRUE(failed_with(qlora_safetensors_metadata_get(nullptr, "k", &v), QLORA_ERROR_INVALID_ARGUMENT, {"file must not be NULL"}));

    // On a real (empty-tensor) file: indices and out-params.
    TempDir dir;
    const std::string path = dir.file("e.safetensors");
    write_file(path, st_bytes("{\"__metadata__\":{\"a\":\"b\"}}"));
    St file;
    ASSERT_EQ(open_st(path, file), QLORA_OK) << qlora_last_error();
    ASSERT_EQ(qlora_safetensors_count(file.get(), &n), QLORA_OK);
    EXPECT_EQ(n, 0);
    qlora_view view{};
    EXPECT_TRUE(failed_with(qlora_safetensors_data(file.get(), 0, &view), QLORA_ERROR_INVALID_ARGUMENT,
                            {"index 0 is out of range: " + path + " has 0 tensors"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_release(file.get(), -1), QLORA_ERROR_INVALID_ARGUMENT, {"index -1 is out of range"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_prefetch(file.get(), 5), QLORA_ERROR_INVALID_ARGUMENT, {"index 5 is out of range"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_info(file.get(), 0, nullptr), QLORA_ERROR_INVALID_ARGUMENT, {"index 0 is out of range"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_metadata_get(file.get(), nullptr, &v), QLORA_ERROR_INVALID_ARGUMENT,
                            {"key must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_metadata_at(file.get(), 0, nullptr, &v), QLORA_ERROR_INVALID_ARGUMENT,
                            {"out_key must not be NULL"}));

    EXPECT_TRUE(failed_with(qlora_safetensors_writer_create(nullptr), QLORA_ERROR_INVALID_ARGUMENT, {"out must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_write(nullptr, "x"), QLORA_ERROR_INVALID_ARGUMENT, {"writer must not be NULL"}));
    Writer w = make_writer();
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_write(w.get(), nullptr), QLORA_ERROR_INVALID_ARGUMENT, {"path must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), nullptr, nullptr, 0, nullptr, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"name must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_add(w.get(), "t", nullptr, 0, nullptr, 0), QLORA_ERROR_INVALID_ARGUMENT,
                            {"data must not be NULL (tensor 't')"}));
    EXPECT_TRUE(failed_with(qlora_safetensors_writer_set_metadata(w.get(), nullptr, "v"), QLORA_ERROR_INVALID_ARGUMENT,
                            {"key must not be NULL"}));
    // An empty writer writes a valid empty file.
    const std::string empty = dir.file("empty.safetensors");
    ASSERT_EQ(qlora_safetensors_writer_write(w.get(), empty.c_str()), QLORA_OK) << qlora_last_error();
    EXPECT_EQ(read_file(empty), st_bytes("{}      "));

    qlora_bnb_quant_state qs{};
    EXPECT_TRUE(failed_with(qlora_bnb_parse_quant_state(nullptr, &qs), QLORA_ERROR_INVALID_ARGUMENT, {"json must not be NULL"}));
    const std::string js = "{}";
    const qlora_view jv = host_view(js.data(), QLORA_DTYPE_U8, 1, 2);
    EXPECT_TRUE(failed_with(qlora_bnb_parse_quant_state(&jv, nullptr), QLORA_ERROR_INVALID_ARGUMENT, {"out must not be NULL"}));
    qlora_view bad_dtype = jv;
    const int32_t bad_value = 1000; // an out-of-range value from a foreign caller
    std::memcpy(&bad_dtype.dtype, &bad_value, 4);
    EXPECT_TRUE(failed_with(qlora_bnb_parse_quant_state(&bad_dtype, &qs), QLORA_ERROR_INVALID_ARGUMENT,
                            {"json has dtype unknown (1000)"}));

    qlora_llama2c_config c{};
    EXPECT_TRUE(failed_with(qlora_llama2c_model_config(nullptr, &c), QLORA_ERROR_INVALID_ARGUMENT, {"model must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_llama2c_model_weight(nullptr, QLORA_LLAMA2C_WQ, 0, &view), QLORA_ERROR_INVALID_ARGUMENT,
                            {"model must not be NULL"}));
    int32_t a = 0, b = 0;
    EXPECT_TRUE(failed_with(qlora_llama2c_tokenizer_info(nullptr, &a, &b), QLORA_ERROR_INVALID_ARGUMENT,
                            {"tokenizer must not be NULL"}));
    qlora_llama2c_tokenizer_t t = nullptr;
    EXPECT_TRUE(failed_with(qlora_llama2c_tokenizer_open(nullptr, 0, &t), QLORA_ERROR_INVALID_ARGUMENT, {"path must not be NULL"}));
    EXPECT_TRUE(failed_with(qlora_llama2c_tokenizer_open("x", 0, nullptr), QLORA_ERROR_INVALID_ARGUMENT, {"out must not be NULL"}));
    // 15 is inside the C++ range of the enum (0..15) but names no array. (A
    // by-value argument outside that range cannot even be formed in C++;
    // the library copies enum bytes anyway, see qlora::raw_enum.)
    const auto which = static_cast<qlora_llama2c_weight>(15);
    // dim 2, hidden 2, 1 layer, 1 head: emb 2, rms 2, wq wk wv wo 4 each, rms 2,
    // w1 w2 w3 4 each, final 2, rope 2 = 38 floats after the header.
    Bytes model(28 + 4 * 38, 0);
    const int32_t hdr[7] = {2, 2, 1, 1, 1, 1, 1};
    std::memcpy(model.data(), hdr, sizeof hdr);
    const std::string mpath = dir.file("m.bin");
    write_file(mpath, model);
    qlora_llama2c_model_t m = nullptr;
    ASSERT_EQ(qlora_llama2c_model_open(mpath.c_str(), &m), QLORA_OK) << qlora_last_error();
    Model mm(m);
    EXPECT_TRUE(failed_with(qlora_llama2c_model_weight(m, which, -1, &view), QLORA_ERROR_INVALID_ARGUMENT,
                            {"which must be a qlora_llama2c_weight (0..11), got 15"}));
    EXPECT_TRUE(failed_with(qlora_llama2c_model_weight(m, QLORA_LLAMA2C_WQ, -1, nullptr), QLORA_ERROR_INVALID_ARGUMENT,
                            {"out must not be NULL"}));
}
