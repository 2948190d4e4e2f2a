namespace QLoRA.BindingGen;

/// <summary>Writes native/src/core/abi_layout.gen.cpp: the library's own answers about qlora.h's layout.</summary>
internal static class NativeEmitter
{
    public static string AbiLayout(AbiModel model, string recipe)
    {
        var w = new CodeWriter();
        foreach (string line in recipe.Split('\n')) w.Line("// " + line);
        w.Line("//");
        w.Line("// Implements the \"ABI introspection\" section of qlora.h: sizeof, offsetof and constant");
        w.Line("// values as this compiler lays them out, for the bindings' layout tests.");
        w.Line("#include \"qlora.h\"");
        w.Line();
        w.Line("#include \"core/error.hpp\"");
        w.Line();
        w.Line("#include <array>");
        w.Line("#include <cstddef>");
        w.Line("#include <cstdint>");
        w.Line("#include <cstring>");
        w.Line();
        w.Line("namespace {");
        w.Line();
        w.Line("struct TypeSize { const char * type; size_t size; };");
        w.Line("struct FieldOffset { const char * type; const char * field; size_t offset; };");
        w.Line("struct Constant { const char * name; int64_t value; };");
        w.Line();

        var sizes = new List<string>();
        sizes.AddRange(model.Enums.Select(e => $"{{\"{e.CName}\", sizeof({e.CName})}},"));
        sizes.AddRange(model.Structs.Select(s => $"{{\"{s.CName}\", sizeof({s.CName})}},"));
        sizes.AddRange(model.Handles.Select(h => $"{{\"{h.CName}\", sizeof({h.CName})}},"));
        sizes.AddRange(model.Callbacks.Select(c => $"{{\"{c.CName}\", sizeof({c.CName})}},"));
        Table(w, "TypeSize", "kTypeSizes", sizes);

        Table(w, "FieldOffset", "kFieldOffsets", model.Structs.SelectMany(s =>
            s.Fields.Select(f => $"{{\"{s.CName}\", \"{f.CName}\", offsetof({s.CName}, {f.CName})}},")).ToList());

        var constants = model.Enums.SelectMany(e => e.Constants.Select(c => c.CName))
                             .Concat(model.Constants.Select(c => c.CName))
                             .Select(n => $"{{\"{n}\", static_cast<int64_t>({n})}},").ToList();
        Table(w, "Constant", "kConstants", constants);
        w.Line("} // namespace");
        w.Line();
        w.Line("extern \"C\" {");
        w.Line();
        w.Open("QLORA_API qlora_status qlora_abi_struct_size(const char * type_name, size_t * out) {");
        w.Open("return QLORA_GUARD({");
        w.Line("QLORA_CHECK_NOT_NULL(type_name);");
        w.Line("QLORA_CHECK_NOT_NULL(out);");
        w.Line("for (const TypeSize & t : kTypeSizes)");
        w.Line("    if (std::strcmp(t.type, type_name) == 0) { *out = t.size; return QLORA_OK; }");
        w.Line("qlora::fail(QLORA_ERROR_INVALID_ARGUMENT, \"unknown type '%s': qlora.h declares no struct, enum, handle or callback of that name\", type_name);");
        w.Close("});");
        w.Close();
        w.Line();
        w.Open("QLORA_API qlora_status qlora_abi_field_offset(const char * type_name, const char * field_name, size_t * out) {");
        w.Open("return QLORA_GUARD({");
        w.Line("QLORA_CHECK_NOT_NULL(type_name);");
        w.Line("QLORA_CHECK_NOT_NULL(field_name);");
        w.Line("QLORA_CHECK_NOT_NULL(out);");
        w.Line("bool known_type = false;");
        w.Open("for (const FieldOffset & f : kFieldOffsets) {");
        w.Line("if (std::strcmp(f.type, type_name) != 0) continue;");
        w.Line("known_type = true;");
        w.Line("if (std::strcmp(f.field, field_name) == 0) { *out = f.offset; return QLORA_OK; }");
        w.Close();
        w.Line("if (!known_type)");
        w.Line("    qlora::fail(QLORA_ERROR_INVALID_ARGUMENT, \"unknown struct '%s': qlora.h declares no struct of that name\", type_name);");
        w.Line("qlora::fail(QLORA_ERROR_INVALID_ARGUMENT, \"struct %s has no field '%s'\", type_name, field_name);");
        w.Close("});");
        w.Close();
        w.Line();
        w.Open("QLORA_API qlora_status qlora_abi_enum_value(const char * constant_name, int64_t * out) {");
        w.Open("return QLORA_GUARD({");
        w.Line("QLORA_CHECK_NOT_NULL(constant_name);");
        w.Line("QLORA_CHECK_NOT_NULL(out);");
        w.Line("for (const Constant & c : kConstants)");
        w.Line("    if (std::strcmp(c.name, constant_name) == 0) { *out = c.value; return QLORA_OK; }");
        w.Line("qlora::fail(QLORA_ERROR_INVALID_ARGUMENT, \"unknown constant '%s': qlora.h declares no enum constant or integer #define of that name\", constant_name);");
        w.Close("});");
        w.Close();
        w.Line();
        w.Line("} // extern \"C\"");
        return w.ToString();
    }

    private static void Table(CodeWriter w, string type, string name, IReadOnlyList<string> rows)
    {
        if (rows.Count == 0)
        {
            w.Line($"constexpr std::array<{type}, 0> {name}{{}};");
            w.Line();
            return;
        }
        w.Open($"constexpr {type} {name}[] = {{");
        foreach (string row in rows) w.Line(row);
        w.Close("};");
        w.Line();
    }
}
