namespace QLoRA.BindingGen;

/// <summary>Everything BindingGen knows about qlora.h, in declaration order.</summary>
public sealed record AbiModel(
    string HeaderSha256,
    IReadOnlyList<EnumDef> Enums,
    IReadOnlyList<StructDef> Structs,
    IReadOnlyList<HandleDef> Handles,
    IReadOnlyList<CallbackDef> Callbacks,
    IReadOnlyList<FunctionDef> Functions,
    IReadOnlyList<ConstantDef> Constants,
    IReadOnlyDictionary<string, CType> ScalarAliases);

/// <param name="CName">The name C code uses for the type (typedef name, or "enum tag").</param>
/// <param name="Underlying">C# underlying type of the enum.</param>
public sealed record EnumDef(string CName, string Tag, string CsName, string Underlying, IReadOnlyList<EnumConstant> Constants, string Doc);

public sealed record EnumConstant(string CName, string CsName, long Value, string Doc);

/// <param name="CName">The name C code uses for the type (typedef name, or "struct tag").</param>
public sealed record StructDef(string CName, string Tag, string CsName, IReadOnlyList<FieldDef> Fields, string Doc);

public sealed record FieldDef(string CName, string CsName, CType Type, string CSpelling, string Doc);

/// <summary>An opaque handle: <c>typedef struct Tag * CName;</c>.</summary>
public sealed record HandleDef(string CName, string Tag, string CsName, string Doc)
{
    /// <summary>"qlora_context_t" -> "qlora_context_free": the usual name of the function that releases it.</summary>
    public string FreeFunctionName => CName[..^2] + "_free";

    public string SafeHandleName => CsName[..^"Handle".Length] + "SafeHandle";
}

/// <summary>A function pointer typedef: <c>typedef R (*CName)(...);</c>.</summary>
public sealed record CallbackDef(string CName, string CsName, CType.Function Signature, string Doc);

public sealed record FunctionDef(string CName, CType Return, IReadOnlyList<ParamDef> Parameters, string CSignature, string Doc);

public sealed record ParamDef(string CName, CType Type);

/// <summary>An integer constant: an anonymous enum's constant or an object-like #define.</summary>
public sealed record ConstantDef(string CName, long Value, string Doc);

/// <summary>An error in the header or in the generator's input; the message says what to fix.</summary>
public sealed class BindingGenException(string message) : Exception(message);
