namespace QLoRA.BindingGen;

/// <summary>C types of qlora.h -> blittable C# types (see README.md for the table).</summary>
public sealed class TypeMap(AbiModel model)
{
    private static readonly Dictionary<string, string> Builtins = new()
    {
        ["char"] = "byte", ["signed char"] = "sbyte", ["unsigned char"] = "byte",
        ["short"] = "short", ["unsigned short"] = "ushort",
        ["int"] = "int", ["unsigned int"] = "uint",
        ["long long"] = "long", ["unsigned long long"] = "ulong",
        ["float"] = "float", ["double"] = "double",
        ["int8_t"] = "sbyte", ["uint8_t"] = "byte", ["int16_t"] = "short", ["uint16_t"] = "ushort",
        ["int32_t"] = "int", ["uint32_t"] = "uint", ["int64_t"] = "long", ["uint64_t"] = "ulong",
        ["size_t"] = "nuint", ["ptrdiff_t"] = "nint", ["intptr_t"] = "nint", ["uintptr_t"] = "nuint",
    };

    private static readonly Dictionary<string, string> Rejected = new()
    {
        ["long"] = "'long' is 32-bit on Windows and 64-bit elsewhere; use int32_t or int64_t",
        ["unsigned long"] = "'unsigned long' is 32-bit on Windows and 64-bit elsewhere; use uint32_t, uint64_t or size_t",
        ["_Bool"] = "bool differs in size between C, C++ and .NET marshalling; use an int32_t flag",
        ["bool"] = "bool differs in size between C, C++ and .NET marshalling; use an int32_t flag",
        ["long double"] = "long double has no .NET equivalent",
        ["__int128"] = "__int128 has no portable C ABI",
        ["unsigned __int128"] = "__int128 has no portable C ABI",
    };

    private static readonly HashSet<string> FixedBufferTypes = ["byte", "sbyte", "short", "ushort", "int", "uint", "long", "ulong", "float", "double"];

    /// <summary>The C# primitive for a builtin or standard integer typedef, or null.</summary>
    public static string? Primitive(CType type) => type is CType.Named n && Builtins.TryGetValue(n.Name, out string? cs) ? cs : null;

    /// <summary>C# type of a field, parameter or return value. <paramref name="where"/> names it in errors.</summary>
    public string Map(CType type, string where, bool allowVoid = false)
    {
        switch (type)
        {
            case CType.Named { Name: "void" }:
                return allowVoid ? "void" : throw Fail(where, "void is only valid as a return type or behind a pointer");
            case CType.Named { Name: var name }:
                return MapNamed(name, where);
            case CType.Pointer { Pointee: CType.Function fn }:
                return FunctionPointer(fn, where);
            case CType.Pointer { Pointee: var pointee }:
                if (pointee is CType.Named { Name: var tag } && tag.StartsWith("struct ", StringComparison.Ordinal)
                    && model.Handles.Any(h => "struct " + h.Tag == tag))
                    throw Fail(where, $"use the handle typedef instead of '{tag} *'");
                return Map(pointee, where, allowVoid: true) + "*";
            case CType.Array:
                throw Fail(where, "arrays are only supported as struct fields");
            default:
                throw Fail(where, $"type '{type}' cannot cross the ABI");
        }
    }

    /// <summary>A struct field: like <see cref="Map"/>, plus fixed-size arrays of primitives.</summary>
    public (string Type, long? FixedLength) MapField(CType type, string where)
    {
        if (type is CType.Array { Element: var element, Length: var length })
        {
            string cs = element is CType.Array ? "" : Map(element, where);
            if (!FixedBufferTypes.Contains(cs))
                throw Fail(where, $"only one-dimensional arrays of primitive numbers can be struct fields, not '{type}'");
            return (cs, length);
        }
        return (Map(type, where), null);
    }

    private string MapNamed(string name, string where)
    {
        if (Builtins.TryGetValue(name, out string? cs)) return cs;
        if (Rejected.TryGetValue(name, out string? why)) throw Fail(where, why);
        if (model.Enums.FirstOrDefault(e => e.CName == name || "enum " + e.Tag == name) is { } en) return en.CsName;
        if (model.Structs.FirstOrDefault(s => s.CName == name || "struct " + s.Tag == name) is { } st) return st.CsName;
        if (model.Handles.FirstOrDefault(h => h.CName == name) is { } h) return h.CsName;
        if (model.Callbacks.FirstOrDefault(c => c.CName == name) is { } cb) return cb.CsName;
        if (model.ScalarAliases.TryGetValue(name, out CType? alias)) return Map(alias, where);
        throw Fail(where, $"unknown type '{name}' (is a header missing, or is it declared after its use?)");
    }

    /// <summary>"delegate* unmanaged[Cdecl]&lt;int, void*, void&gt;" for a C function pointer.</summary>
    public string FunctionPointer(CType.Function fn, string where)
    {
        if (fn.Variadic) throw Fail(where, "variadic callbacks cannot be called from .NET");
        var types = fn.Parameters.Select((p, i) => Map(p, $"{where} parameter {i}")).ToList();
        types.Add(Map(fn.Return, $"{where} return", allowVoid: true));
        return $"delegate* unmanaged[Cdecl]<{string.Join(", ", types)}>";
    }

    private static BindingGenException Fail(string where, string why) => new($"{where}: {why}");
}
